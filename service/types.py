"""Typed values between the core and the codecs: what a served model is, and what a prediction holds.

Codecs read these and nothing else of the core, so a wire format never reaches into the bundle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnserve.bundle.signature import Signature


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    signature: Signature  # inputs and outputs, as data (rnnserve.bundle.signature)
    platform: str = "onnxruntime_onnx"
    cannot_stream: str | None = None  # why this model cannot stream (None: it can)
    frame: int = 1  # input steps per recurrent step: a stream's chunks but its last are whole frames

    @property
    def task(self) -> str:
        return "classification" if self.signature.classifier else "regression"

    @property
    def classifier(self) -> bool:
        return self.signature.classifier

    @property
    def labels(self) -> tuple[str, ...]:
        return self.signature.labels

    @property
    def num_features(self) -> int:
        return self.signature.num_features

    @property
    def num_outputs(self) -> int:
        return self.signature.num_outputs

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
    """The named output tensors of the signature (``output``, and ``probabilities`` and ``label``
    for classifiers), one row per sequence in request order."""

    model: ModelInfo
    tensors: dict[str, np.ndarray]
    sequence: SequenceControl | None = None  # the stream this answers a chunk of (echoed to clients)
    steps: int | None = None  # for a stream chunk: timesteps of the stream so far
    lengths: np.ndarray | None = None  # per-step models: each row's own steps (the rest is zero padding)

    def __len__(self) -> int:
        return int(self.outputs.shape[0])

    @property
    def outputs(self) -> np.ndarray:
        """The graph's raw output (logits or values)."""
        return self.tensors[self.model.signature.output.name]

    @property
    def probabilities(self) -> np.ndarray | None:
        sig = self.model.signature
        return self.tensors[sig.outputs[1].name] if sig.classifier else None

    @property
    def labels(self) -> list[str] | None:
        """The predicted class name per row (classifiers)."""
        sig = self.model.signature
        return [label.decode() for label in self.tensors[sig.outputs[2].name].tolist()] if sig.classifier else None

    @classmethod
    def from_outputs(cls, model: ModelInfo, raw: np.ndarray) -> Prediction:
        """From the graph's raw outputs (softmax computed here)."""
        return cls.from_rows(model, model.signature.pack(raw))

    @classmethod
    def from_rows(cls, model: ModelInfo, rows: np.ndarray, sequence: SequenceControl | None = None,
                  steps: int | None = None, lengths: np.ndarray | None = None) -> Prediction:
        """From the packed rows of model runs (``Signature.pack``); per step, ``lengths`` marks each
        row's own steps."""
        return cls(model, model.signature.unpack(rows, lengths), sequence, steps, lengths)

    def drift_values(self) -> list[np.ndarray]:
        """What each row predicted, for the drift window: the class ids (classifiers) or the output
        values ``[k, O]`` (regressors), one per sequence or one per own step for per-step models."""
        if self.model.classifier:
            rows = self.outputs.argmax(axis=-1)
        else:
            rows = self.outputs.reshape(*self.outputs.shape[: 2 if self.lengths is not None else 1], -1)
        if self.lengths is None:
            return list(rows[:, None])
        return [row[:n] for row, n in zip(rows, self.lengths.tolist(), strict=True)]
