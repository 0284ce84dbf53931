"""Typed values between the core and the codecs: what a served model is, and what a prediction holds.

Codecs read these and nothing else of the core, so a wire format never reaches into the bundle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    task: str  # "classification" or "regression"
    num_features: int
    num_outputs: int
    labels: tuple[str, ...]  # class names, in output order (empty for regressors)
    platform: str = "onnxruntime_onnx"
    cannot_stream: str | None = None  # why this model cannot stream (None: it can)
    frame: int = 1  # input steps per recurrent step: a stream's chunks but its last are whole frames

    @property
    def classifier(self) -> bool:
        return self.task == "classification"

    @property
    def can_stream(self) -> bool:
        return self.cannot_stream is None


@dataclass(frozen=True)
class SequenceControl:
    """Triton's sequence extension on one request: the stream a chunk belongs to and its flags.
    An integer and a string id are different streams (Triton types them by the model config)."""

    id: int | str
    start: bool = False
    end: bool = False
    # The stream's timesteps before this chunk, when the client says (``sequence_offset``): the chunk
    # then applies exactly once, a resend of an applied chunk gets its answer again, and a chunk that
    # does not fit the stream is refused instead of applied out of order. None: arrival order.
    offset: int | None = None

    @property
    def key(self) -> tuple[str, int | str]:
        return ("int" if isinstance(self.id, int) else "str", self.id)

    def shown(self) -> str:
        return str(self.id) if isinstance(self.id, int) else repr(self.id)


@dataclass(frozen=True)
class Prediction:
    """One row per sequence, in request order."""

    model: ModelInfo
    outputs: np.ndarray  # float32 [B, O]: the graph's raw output (logits or values)
    probabilities: np.ndarray | None = None  # float32 [B, C], classifiers only
    labels: tuple[str, ...] | None = None  # predicted class name per row, classifiers only
    sequence: SequenceControl | None = None  # the stream this answers a chunk of (echoed to clients)
    steps: int | None = None  # for a stream chunk: timesteps of the stream so far

    def __len__(self) -> int:
        return int(self.outputs.shape[0])

    @classmethod
    def from_outputs(cls, model: ModelInfo, raw: np.ndarray) -> Prediction:
        """From the graph's raw outputs (softmax computed here)."""
        raw = np.asarray(raw, dtype=np.float32)
        return cls.from_rows(model, with_probabilities(raw) if model.classifier else raw)

    @classmethod
    def from_rows(cls, model: ModelInfo, rows: np.ndarray, sequence: SequenceControl | None = None,
                  steps: int | None = None) -> Prediction:
        """From rows that ``with_probabilities`` produced per model run (classifiers) or raw values."""
        if not model.classifier:
            return cls(model, rows, sequence=sequence, steps=steps)
        raw, probs = rows[:, : model.num_outputs], rows[:, model.num_outputs :]
        return cls(model, raw, probs, tuple(model.labels[i] for i in raw.argmax(axis=1)), sequence, steps)


def with_probabilities(raw: np.ndarray) -> np.ndarray:
    """Logits ``[B, C]`` -> ``[B, 2C]``: the logits, then their softmax. Computed once per model run on
    the worker thread, for a whole bucket at a time, instead of once per request on the event loop."""
    raw = np.asarray(raw, dtype=np.float32)
    probs = np.exp(raw - raw.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return np.concatenate([raw, probs], axis=1)
