"""Export a ``SequenceModel`` to ONNX (native RNN ops with ``sequence_lens``) and TorchScript.

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

MAX_IR_VERSION = 10  # onnxruntime 1.31 accepts up to 13; 10 keeps older runtimes working too
NATIVE_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


class ExportError(RuntimeError):
    """The exported artifact is structurally wrong (before any numerical check)."""


def _example(model: SequenceModel) -> tuple[torch.Tensor, torch.Tensor]:
    # Batch 3 with distinct lengths, none equal to T, so nothing specialises to one shape.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, model.spec.input_size, generator=gen)
    return x, torch.tensor([11, 4, 7], dtype=torch.int64)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's deprecation and C++ shape-inference chatter (written straight to
    fd 2); if the export fails, the captured text is re-raised with the error."""
    captured = tempfile.TemporaryFile(mode="w+b")
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    except Exception as exc:
        os.dup2(saved, 2)
        captured.seek(0)
        raise ExportError(f"{exc}\nexporter output:\n{captured.read().decode(errors='replace')}") from exc
    finally:
        os.dup2(saved, 2)
        os.close(saved)
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
