"""``rnnserve export --onnx FILE --name NAME``: an ONNX RNN graph from elsewhere (Keras via tf2onnx,
another exporter) in, a bundle out, checked for what can be checked without the framework it came from.

The graph's inputs are the sequence (float ``[B, T, F]`` or integer ``[B, T]``) and optionally the
lengths ``[B]``, with one output (``input_name`` / ``lengths_name`` / ``output_name`` where there are
several to choose from). Structure first: dynamic batch and time axes on the sequence, at least one
native ``LSTM`` / ``GRU`` / ``RNN`` node. Then a self-consistency gate with the graph as its own
reference: every padded batch must answer each sequence as it answers that sequence alone (a graph
that takes no lengths and whose answers padding changes is served with equal-length batches), and,
where a state-carrying graph can be derived, streams fed in random chunks must answer as the whole
prefix does.

What this cannot prove: that the graph computes what the original model computed (there is no
reference to compare with, only the graph itself), nor anything about inputs unlike the ones drawn
(features standard normal, token ids uniform over the vocabulary)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from rnnserve.bundle import manifest as bundles
from rnnserve.bundle.batch import pad
from rnnserve.bundle.reference import reference_stats
from rnnserve.bundle.signature import Signature

from .chunked import check_chunked_parity, onnx_stream_runner, prefix_truths
from .derive import RECURRENT, CannotStream, derive_streaming
from .errors import ModuleError, ParityError
from .gate_report import write_report
from .parity import ParityConfig, check_parity, gate_session, raise_for_failures

INTEGER = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


@dataclass(frozen=True)
class GraphIO:
    x: str
    lengths: str | None
    output: str
    tokens: bool
    num_features: int


class GraphSubject:
    """The graph as its own reference (``parity.Subject`` and ``chunked.StreamSubject``): one sequence
    alone, unpadded, through ONNX Runtime."""

    frame = 1

    def __init__(self, path: Path, io: GraphIO, vocab_size: int | None) -> None:
        self.session, self.io, self.vocab_size = gate_session(path), io, vocab_size
        self.per_step = False
        self.equal_lengths = False

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        if self.io.tokens:
            return rng.integers(0, self.vocab_size, length).astype(np.int64)
        return rng.standard_normal((length, self.io.num_features)).astype(np.float32)

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return pad(seqs, dtype=np.int64 if self.io.tokens else np.float32)

    def run(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = {self.io.x: x} if self.io.lengths is None else {self.io.x: x, self.io.lengths: lengths}
        return self.session.run([self.io.output], feeds)[0]

    def eager(self, seq: np.ndarray, double: bool) -> np.ndarray:
        return self.run(*self.batch([seq]))[0]

    def chunk_truths(self, seq: np.ndarray, sizes: tuple[int, ...], double: bool):
        return prefix_truths(self.eager, seq, sizes, double, self.per_step)


def find_io(graph: onnx.ModelProto, input_name: str | None, lengths_name: str | None,
            output_name: str | None) -> GraphIO:
    inputs = {i.name: i for i in graph.graph.input}
    initializers = {t.name for t in graph.graph.initializer}
    inputs = {k: v for k, v in inputs.items() if k not in initializers}

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    def kind(value) -> int:
        return value.type.tensor_type.elem_type

    if input_name is None:
        candidates = [n for n, v in inputs.items() if len(dims(v)) == 3 or (len(dims(v)) == 2 and kind(v) in INTEGER)]
        if len(candidates) != 1:
            raise ModuleError(f"the graph's inputs are {sorted(inputs)}: name the sequence with --input-name")
        input_name = candidates[0]
    if input_name not in inputs:
        raise ModuleError(f"the graph has no input {input_name!r} (inputs: {sorted(inputs)})")
    rest = [n for n in inputs if n != input_name]
    if lengths_name is None and rest:
        if len(rest) > 1:
            raise ModuleError(f"the graph takes {sorted(inputs)}: name the lengths with --lengths-name")
        lengths_name = rest[0]
    if lengths_name is not None and (lengths_name not in inputs or len(dims(inputs[lengths_name])) != 1):
        raise ModuleError(f"--lengths-name {lengths_name!r} is not a 1-D input of the graph")
    outputs = [o.name for o in graph.graph.output]
    if output_name is None:
        if len(outputs) != 1:
            raise ModuleError(f"the graph has outputs {outputs}: name the one to serve with --output-name")
        output_name = outputs[0]
    if output_name not in outputs:
        raise ModuleError(f"the graph has no output {output_name!r} (outputs: {outputs})")
    x = dims(inputs[input_name])
    tokens = kind(inputs[input_name]) in INTEGER
    if len(x) != (2 if tokens else 3) or any(isinstance(d, int) and d > 0 for d in x[:2]):
        raise ModuleError(f"input {input_name!r} has shape {x}: expected dynamic batch and time axes, "
                          f"[batch, time{'' if tokens else ', features'}]")
    if not tokens and not (isinstance(x[2], int) and x[2] > 0):
        raise ModuleError(f"input {input_name!r} has no fixed feature count ({x}): the server needs it")
    if not any(n.op_type in RECURRENT for n in graph.graph.node):
        raise ModuleError("the graph has no native LSTM, GRU or RNN node: an RNN graph is expected (a recurrence "
                          "unrolled into a loop cannot stream or be batched by length)")
    return GraphIO(input_name, lengths_name, output_name, tokens, 0 if tokens else int(x[2]))


def vocabulary(graph: onnx.ModelProto, io: GraphIO, given: int | None) -> int | None:
    """Token ids index an embedding: the first Gather of an initializer by the sequence input."""
    if not io.tokens or given is not None:
        return given
    tables = {t.name: t for t in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "Gather" and node.input[1] == io.x and node.input[0] in tables:
            return int(tables[node.input[0]].dims[0])
    raise ModuleError("the graph takes token ids but reads no embedding table from them: pass --vocab-size")


def import_onnx(path: Path, name: str, *, input_name: str | None = None, lengths_name: str | None = None,
                output_name: str | None = None, labels=(), vocab_size: int | None = None,
                config: ParityConfig = ParityConfig(max_length=1000), say=lambda line: None) -> str:
    graph = onnx.load(str(path))
    io = find_io(graph, input_name, lengths_name, output_name)
    vocab = vocabulary(graph, io, vocab_size)
    with tempfile.TemporaryDirectory(prefix="rnnserve-import-") as tmp:
        staging = Path(tmp)
        shutil.copy2(path, staging / bundles.ONNX_FILE)
        subject = GraphSubject(staging / bundles.ONNX_FILE, io, vocab)
        signature = _signature(subject, io, labels, vocab)
        subject.per_step, subject.equal_lengths = signature.per_step, signature.equal_lengths
        say(f"self-consistency gate: each sequence in padded batches vs alone, lengths 1..{config.max_length}")
        report = check_parity(subject, {"onnx": subject.run}, config, train_max=50,
                              progress=lambda case: say(f"  case {case}"))
        write_report(report, staging)
        raise_for_failures(report)
        stream, chunked, why = _streaming(subject, io, staging, config, say)
        write_report(report, staging, chunked)
        _write_reference(subject, signature, staging)
        fields = {"signature": signature, "task": "classification" if labels else "regression",
                  "module": {"source": "onnx", "file": Path(path).name, "graph": [io.x, io.lengths, io.output]},
                  "parity": {**report.to_dict(), "streaming": None if chunked is None else chunked.to_dict()},
                  "reference_source": "inputs drawn by the import (standard normal features or uniform token ids)",
                  "streaming": None if stream is None else stream.to_manifest(
                      signature.num_features, signature.num_outputs, x_datatype=signature.input.datatype,
                      x_shape=list(signature.input.shape), output_shape=list(signature.output.shape)),
                  "streaming_unavailable": why}
        tags = {"labels": {"framework": "onnx", "task": fields["task"], "source": "onnx"}, "metadata": {}}
        stored = bundles.store(staging, name, fields, bundles.build_module_manifest, None, tags)
    return f"{stored.name}:{stored.version}"


def _signature(subject: GraphSubject, io: GraphIO, labels, vocab) -> Signature:
    rng = np.random.default_rng(0)
    shapes = []
    for steps in (7, 11):
        x, lengths = subject.batch([subject.sample(rng, n) for n in (steps, steps - 2, steps - 4)])
        shapes.append(subject.run(x, lengths).shape)
    (a, b) = shapes
    per_step = len(a) >= 2 and a[1] == 7 and b[1] == 11
    if not per_step and (len(a) != 2 or a != b):
        raise ModuleError(f"output {io.output!r} has shape {list(a)} for 3 x 7 steps and {list(b)} for 3 x 11: "
                          f"expected [B, O] or [B, T, O] / [B, T]")
    step_values = per_step and len(a) == 2
    outputs = 1 if step_values else int(a[-1])
    if labels and len(labels) != outputs:
        raise ModuleError(f"{len(labels)} labels for a graph with {outputs} output(s)")
    subject.per_step = per_step
    equal = not _padding_invariant(subject)
    if equal and io.lengths is not None:
        raise ParityError("padded batches answer differently from one sequence at a time although the graph takes "
                          "lengths: it does not honour them")
    return Signature.build(tokens=io.tokens, num_features=io.num_features, num_outputs=outputs, per_step=per_step,
                           step_values=step_values, labels=tuple(labels), vocab_size=vocab,
                           takes_lengths=io.lengths is not None, equal_lengths=equal,
                           graph=(io.x, io.lengths or "lengths", io.output))


def _padding_invariant(subject: GraphSubject) -> bool:
    rng = np.random.default_rng(7)
    seqs = [subject.sample(rng, n) for n in (13, 5, 1, 9)]
    together = subject.run(*subject.batch(seqs))
    for row, s in zip(together, seqs, strict=True):
        mine = row[: len(s)] if subject.per_step else row
        if not np.allclose(mine, subject.eager(s, False), rtol=0, atol=1e-5):
            return False
    return True


def _streaming(subject: GraphSubject, io: GraphIO, staging: Path, config: ParityConfig, say):
    path = staging / bundles.STREAMING_FILE
    try:
        stream = derive_streaming(staging / bundles.ONNX_FILE, path, io.x, io.lengths or "lengths", io.output)
    except CannotStream as exc:
        return None, None, str(exc)
    say("chunked self-consistency: streams in random chunks, state carried, vs the whole prefix")
    chunked = check_chunked_parity(subject, onnx_stream_runner(path, stream), stream, config, 50)
    if chunked.passed:
        return stream, chunked, None
    path.unlink()
    return None, chunked, ("streams fed chunk by chunk do not answer as the whole prefix does: the answers are not "
                           f"a function of carried state ({chunked.failures[0][:300]})")


def _write_reference(subject: GraphSubject, signature: Signature, staging: Path) -> None:
    rng = np.random.default_rng(11)
    seqs = [subject.sample(rng, int(n)) for n in np.linspace(1, 100, 16).round()]
    outputs = [subject.eager(s, False) for s in seqs]
    stats = reference_stats(seqs, outputs if signature.per_step else np.stack(outputs),
                            "classification" if signature.classifier else "regression", signature.labels,
                            "inputs drawn by the import", signature.vocab_size)
    (staging / "reference.json").write_text(json.dumps(stats, indent=1))
    golden = {"sequences": [s.tolist() for s in seqs], "outputs": [o.tolist() for o in outputs]}
    (staging / "golden.json").write_text(json.dumps(golden))
