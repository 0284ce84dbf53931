"""The streaming graph of the project's own models: the same derivation as any module's (``derive``),
applied to the exported ``model.onnx`` (normalisation, frames, the packed batch's sort and unsort, the
forward direction read at ``length - 1``: all as exported), with the model's frame.

    model.onnx --derive--> streaming.onnx: x, lengths, {h,c}_l{k}_in [B, H] -> output, {h,c}_l{k}_out [B, H]

It replaced a graph built node by node from the weights (gate orders and bias layouts rewritten by
hand) once the derived graph measured as cheap as the built one (docs/BENCHMARKS.md, "Streaming for
any RNN"): one mechanism for every model, proven by the same chunked gate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx

from rnnserve.bundle.manifest import INPUT_NAMES, OUTPUT_NAME, STREAMING_FILE, StateTensor, StreamingSpec
from rnnserve.models.nets import SequenceModel

from .derive import CannotStream, check_state_graph, derive_streaming
from .errors import ExportError


def streaming_unavailable(model: SequenceModel) -> str | None:
    """Why ``model`` cannot have a streaming graph (None when it can)."""
    if model.spec.bidirectional:
        return ("bidirectional model: its reverse direction reads each sequence from the end, so no "
                "answer exists before the whole sequence has arrived")
    return None


def state_tensors(model: SequenceModel) -> tuple[StateTensor, ...]:
    """The graph's state tensors in feed order: per layer h (and c for LSTM)."""
    kinds = ("h", "c") if model.spec.cell == "lstm" else ("h",)
    return tuple(
        StateTensor(layer, kind, f"{kind}_l{layer}_in", f"{kind}_l{layer}_out", model.spec.hidden_size)
        for layer in range(model.spec.num_layers)
        for kind in kinds
    )


def streaming_spec(model: SequenceModel, file: str = STREAMING_FILE) -> StreamingSpec:
    """The streaming graph's contract for ``model`` (what the derivation must give)."""
    return StreamingSpec(file, INPUT_NAMES, OUTPUT_NAME, state_tensors(model), frame=model.spec.frame)


def export_streaming_onnx(model: SequenceModel, onnx_path: Path, path: Path) -> StreamingSpec:
    """Derive ``path`` from the model's exported ``onnx_path``; checked against ``streaming_spec``."""
    unavailable = streaming_unavailable(model)
    if unavailable is not None:
        raise ExportError(f"cannot build a streaming graph: {unavailable}")
    try:
        derived = derive_streaming(onnx_path, path, *INPUT_NAMES, OUTPUT_NAME)
    except CannotStream as exc:
        raise ExportError(f"cannot build a streaming graph: {exc}") from exc
    spec = replace(derived, frame=model.spec.frame)
    if spec.states != state_tensors(model):
        raise ExportError(f"the derived streaming graph's states {[s.input for s in spec.states]} are not the model's "
                          f"{[s.input for s in state_tensors(model)]}")
    check_state_graph(onnx.load(str(path)), spec)
    return spec
