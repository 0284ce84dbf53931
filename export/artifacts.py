"""Export to ONNX (native RNN ops) and TorchScript: the project's own ``SequenceModel``
(``export_onnx``, ``export_torchscript``) and any user module with RNNs inside (``export_module_onnx``,
``export_module_torchscript``, driven by what ``probe.probe_module`` learnt of it).

Uses the TorchScript-based exporter (``dynamo=False``): measured here, ``dynamo=True`` fails on
packed sequences and unrolls a vanilla RNN to the example length. The exported graph is checked:
symbolic batch/time axes, a native LSTM/GRU/RNN node with ``sequence_lens`` wired, IR version that
the installed ONNX Runtime accepts.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from rnnserve.bundle.manifest import DEFAULT_OPSET, INPUT_NAMES, OUTPUT_NAME
from rnnserve.models.nets import SequenceModel

from .errors import ExportError
from .probe import ModuleProbe

MAX_IR_VERSION = 10  # onnxruntime 1.31 accepts up to 13; 10 keeps older runtimes working too
NATIVE_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _example(model: SequenceModel) -> tuple[torch.Tensor, torch.Tensor]:
    # Batch 3 with distinct lengths, none equal to T, so nothing specialises to one shape.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, model.spec.input_size, generator=gen)
    return x, torch.tensor([11, 4, 7], dtype=torch.int64)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's deprecation and C++ shape-inference chatter (written straight to fd 2,
    and on some failures a graph dump to fd 1); if the export fails, the captured text is re-raised
    with the error."""
    captured = tempfile.TemporaryFile(mode="w+b")
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(captured.fileno(), fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    except Exception as exc:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
        captured.seek(0)
        raise ExportError(f"{exc}\nexporter output:\n{captured.read().decode(errors='replace')[-4000:]}") from exc
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        captured.close()


def export_onnx(model: SequenceModel, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    model.eval()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            model,
            _example(model),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    if graph.ir_version > MAX_IR_VERSION:
        graph.ir_version = MAX_IR_VERSION
        onnx.save(graph, str(path))
    check_onnx_graph(graph, model.spec.cell)
    return path


def check_onnx_graph(graph: onnx.ModelProto, cell: str) -> None:
    onnx.checker.check_model(graph)
    inputs = {i.name: i for i in graph.graph.input}
    if set(inputs) != set(INPUT_NAMES):
        raise ExportError(f"ONNX inputs are {sorted(inputs)}, expected {list(INPUT_NAMES)}")
    for name, symbolic_axes in (("x", (0, 1)), ("lengths", (0,))):
        dims = inputs[name].type.tensor_type.shape.dim
        fixed = [ax for ax in symbolic_axes if not dims[ax].dim_param]
        if fixed:
            raise ExportError(
                f"ONNX input {name!r} has fixed size on axes {fixed} "
                f"({[d.dim_value for d in dims]}): the graph would only accept one shape"
            )
    op = NATIVE_OPS[cell]
    nodes = [n for n in graph.graph.node if n.op_type == op]
    if not nodes:
        raise ExportError(f"no native ONNX {op} node: the recurrence was unrolled or lost")
    for node in nodes:
        if len(node.input) < 5 or not node.input[4]:
            raise ExportError(f"{op} node {node.name!r} has no sequence_lens input wired")


def export_torchscript(model: SequenceModel, path: Path) -> Path:
    model.eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, _example(model), check_trace=False)
    traced.save(str(path))
    return path


# ---- a user's module ------------------------------------------------------------------------------

# The legacy exporter's ONNX peephole pass (``pushPackingPastRnn``) reads the first use of an RNN's
# packed output and crashes when there is none ("vector::_M_range_check"): exactly the common
# ``fc(h_n[-1])`` classifier over packed sequences with one RNN layer (deeper stacks feed the output to
# the next layer, so they export). The way through: export a wrapper that also returns each such output
# padded (pack -> RNN -> pad is the pattern the pass rewrites), then drop those outputs from the graph
# and every node only they needed. The user's computation is not changed.
PEEPHOLE_CRASH = "_M_range_check"


class _Steered(torch.nn.Module):
    """``model``, also returning each RNN's packed output, padded (the steering outputs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self._outputs: list = []
        self._hooks = [m.register_forward_hook(lambda _m, _i, out: self._outputs.append(out[0]))
                       for m in model.modules() if isinstance(m, torch.nn.RNNBase)]

    def forward(self, *args):
        from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

        self._outputs.clear()
        out = self.model(*args)
        return (out, *(pad_packed_sequence(y, batch_first=True)[0] for y in self._outputs
                       if isinstance(y, PackedSequence)))

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def module_example(probe: ModuleProbe) -> tuple:
    """Batch 3 with distinct lengths, none 1 and none equal to T, so nothing specialises to one shape."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, lengths = probe.batch([probe.sample(rng, n) for n in (11, 4, 7)])
    return (torch.from_numpy(x), torch.from_numpy(lengths)) if probe.takes_lengths else (torch.from_numpy(x),)


def export_module_onnx(model: torch.nn.Module, probe: ModuleProbe, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    names = list(INPUT_NAMES[: 2 if probe.takes_lengths else 1])
    axes = {"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
            OUTPUT_NAME: {0: "batch", 1: "time"} if probe.per_step else {0: "batch"}}
    kwargs = {"input_names": names, "opset_version": opset, "dynamo": False,
              "dynamic_axes": {k: v for k, v in axes.items() if k in names or k == OUTPUT_NAME}}
    example = module_example(probe)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(model, example, str(path), output_names=[OUTPUT_NAME], **kwargs)
    except ExportError as exc:
        if PEEPHOLE_CRASH not in str(exc):
            raise
        _export_steered(model, example, path, kwargs)
    graph = onnx.load(str(path))
    graph.ir_version = min(graph.ir_version, MAX_IR_VERSION)
    onnx.save(graph, str(path))
    check_module_graph(graph, names)
    return path


def _export_steered(model: torch.nn.Module, example: tuple, path: Path, kwargs: dict) -> None:
    steered = _Steered(model)
    try:
        with torch.no_grad():
            extra = len(steered(*example)) - 1
        with _quiet(), torch.no_grad():
            torch.onnx.export(steered, example, str(path),
                              output_names=[OUTPUT_NAME, *(f"steering_{i}" for i in range(extra))], **kwargs)
    finally:
        steered.remove()
    graph = onnx.load(str(path))
    keep = [o for o in graph.graph.output if o.name == OUTPUT_NAME]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    needed, kept = {OUTPUT_NAME}, []
    for node in reversed(list(graph.graph.node)):  # nodes are topologically sorted: walk back from the output
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.graph.node[:]
    graph.graph.node.extend(reversed(kept))
    used = needed | {i.name for i in graph.graph.input}
    initializers = [t for t in graph.graph.initializer if t.name in used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(initializers)
    onnx.save(graph, str(path))


def check_module_graph(graph: onnx.ModelProto, names: list[str]) -> None:
    """Structure before numbers: a valid graph, symbolic batch/time axes, a native recurrent node."""
    onnx.checker.check_model(graph)
    inputs = {i.name: i for i in graph.graph.input}
    if set(inputs) != set(names):
        raise ExportError(f"ONNX inputs are {sorted(inputs)}, expected {names}")
    for name, axes in (("x", (0, 1)), ("lengths", (0,))):
        if name in inputs:
            dims = inputs[name].type.tensor_type.shape.dim
            fixed = [ax for ax in axes if not dims[ax].dim_param]
            if fixed:
                raise ExportError(f"ONNX input {name!r} has a fixed size on axes {fixed} "
                                  f"({[d.dim_value for d in dims]}): the graph would take only one shape")
    if not any(n.op_type in NATIVE_OPS.values() for n in graph.graph.node):
        raise ExportError("the ONNX graph has no native LSTM, GRU or RNN node: the recurrence was unrolled or "
                          "lost (a Python loop over time steps, or a cell called step by step, exports that way)")


def export_module_torchscript(model: torch.nn.Module, probe: ModuleProbe, path: Path) -> Path:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, module_example(probe), check_trace=False)
    traced.save(str(path))
    return path
