"""A served model's signature as data: its inputs and outputs, each a ``TensorSpec`` (name, datatype,
shape with ``-1`` for dynamic axes, per sequence or per step), read from the bundle's manifest here
and nowhere else. v2 metadata, Triton's model config, the OpenAPI schema, request validation, padding
and the codecs all derive from it (PyTriton's shape: the signature is a value, not code).

Wire names are the Open Inference Protocol names clients use (``input``, ``lengths``, ``output``,
``probabilities``, ``label``); each tensor the graph computes also keeps the graph's own name
(``graph``: ``x``, ``lengths``, ``output`` in bundles of formats 1 and 2), mapped here once.

Every model takes an optional ``lengths`` whatever its graph takes: the server pads ragged batches,
so it always knows each row's length. Classifiers add ``probabilities`` (the softmax of ``output``,
computed by the server) and ``label`` (the class name of the largest), per sequence or per step like
``output``.

A model run's outputs travel from the worker thread to the request as one packed float32 array per
run (``pack``: ``output`` then ``probabilities`` on the last axis) and become named tensors on the
way out (``unpack``), so a row is one view, whatever the number of outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

INPUT, LENGTHS = "input", "lengths"
OUTPUT, PROBABILITIES, LABEL = "output", "probabilities", "label"
TRITON_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "BYTES": "TYPE_STRING"}
NUMPY_TYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # the wire name
    datatype: str  # Open Inference Protocol datatype: FP32, INT64, INT32, BYTES
    shape: tuple[int, ...]  # batch axis first; -1 for a dynamic axis
    per_step: bool = False  # the axis after the batch axis is time: one value per timestep
    optional: bool = False
    graph: str | None = None  # the graph's own name for it (None: the server computes it)
    _fixed: tuple = field(init=False, repr=False, compare=False)  # (getter of the fixed axes, their sizes)

    def __post_init__(self) -> None:
        axes = [i for i, d in enumerate(self.shape) if d != -1]
        sizes = tuple(self.shape[i] for i in axes)
        getter = itemgetter(*axes) if axes else None
        object.__setattr__(self, "_fixed", (getter, sizes[0] if len(axes) == 1 else sizes))

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of ``shape`` has this rank and this size on every fixed axis (called per
        request: no loop in Python)."""
        getter, sizes = self._fixed
        return len(shape) == len(self.shape) and (getter is None or getter(shape) == sizes)

    @property
    def dims(self) -> list[int]:
        """Triton's model-config dims: the shape without the batch axis, ``[1]`` for one value per row."""
        return list(self.shape[1:]) or [1]

    @property
    def dtype(self) -> type:
        return NUMPY_TYPES[self.datatype]

    def metadata(self) -> dict:
        """v2 model metadata's entry for this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self) -> dict:
        """Triton's model config entry for this tensor."""
        entry = {"name": self.name, "data_type": TRITON_TYPES[self.datatype], "dims": self.dims}
        if self.optional:
            entry["optional"] = True
        return entry


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]  # the sequence, then its lengths
    outputs: tuple[TensorSpec, ...]  # output, then probabilities and label for classifiers
    labels: tuple[str, ...] = ()  # class names in output order (classifiers)
    # Roles, set once from the above (plain attributes: they are read per request)
    input: TensorSpec = field(init=False, repr=False, compare=False)  # the sequence input
    lengths: TensorSpec = field(init=False, repr=False, compare=False)
    output: TensorSpec = field(init=False, repr=False, compare=False)  # the graph's raw output
    classifier: bool = field(init=False, repr=False, compare=False)
    num_features: int = field(init=False, repr=False, compare=False)
    num_outputs: int = field(init=False, repr=False, compare=False)
    per_step: bool = field(init=False, repr=False, compare=False)
    _names: np.ndarray = field(init=False, repr=False, compare=False)  # label tensor values (BYTES)

    def __post_init__(self) -> None:
        roles = {"input": self.inputs[0], "lengths": self.inputs[1], "output": self.outputs[0],
                 "classifier": bool(self.labels), "num_features": self.inputs[0].shape[2],
                 "num_outputs": self.outputs[0].shape[-1], "per_step": self.outputs[0].per_step,
                 "_names": np.array([label.encode() for label in self.labels] or [b""], dtype=object)}
        for name, value in roles.items():
            object.__setattr__(self, name, value)

    def find(self, name: str) -> TensorSpec | None:
        return next((t for t in (*self.inputs, *self.outputs) if t.name == name), None)

    # ---- outputs: packed per model run, named per request -------------------------------------------

    def pack(self, raw: np.ndarray) -> np.ndarray:
        """A model run's raw ``output`` -> the packed rows: classifiers append the softmax on the last
        axis (computed once per run on the worker thread, not once per request on the event loop)."""
        raw = np.asarray(raw, dtype=np.float32)
        if not self.classifier:
            return raw
        probs = np.exp(raw - raw.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.concatenate([raw, probs], axis=-1)

    def unpack(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Packed rows ``[B, ...]`` -> the named output tensors, in signature order (``label``: an
        object array of the class names as bytes, Triton's BYTES elements)."""
        if not self.classifier:
            return {self.output.name: rows}
        n = self.num_outputs
        raw = rows[..., :n]
        return {self.output.name: raw, self.outputs[1].name: rows[..., n:],
                self.outputs[2].name: self._names[raw.argmax(axis=-1)]}

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def for_features(cls, num_features: int, num_outputs: int, labels=(), graph=("x", "lengths", "output")
                     ) -> Signature:
        """Float features ``[B, T, F]`` in, one row ``[B, O]`` per sequence out: the models of bundle
        formats 1 and 2 (``graph``: the graph's names for the sequence, its lengths and its output)."""
        x, lengths, output = graph
        inputs = (TensorSpec(INPUT, "FP32", (-1, -1, num_features), graph=x),
                  TensorSpec(LENGTHS, "INT64", (-1,), optional=True, graph=lengths))
        outputs = [TensorSpec(OUTPUT, "FP32", (-1, num_outputs), graph=output)]
        if labels:
            outputs += [TensorSpec(PROBABILITIES, "FP32", (-1, num_outputs)), TensorSpec(LABEL, "BYTES", (-1,))]
        return cls(inputs, tuple(outputs), tuple(labels))

    @classmethod
    def from_manifest(cls, manifest: dict) -> Signature:
        """The signature a bundle's manifest describes (formats 1 and 2: the graph's ``inputs`` are
        ``[x, lengths]``, its one output ``[B, O]``; ``labels`` for classifiers)."""
        inputs, (output, *_) = manifest["inputs"], manifest["outputs"]
        labels = tuple(manifest.get("labels", ())) if manifest["task"] == "classification" else ()
        return cls.for_features(int(inputs[0]["shape"][2]), int(output["shape"][1]), labels,
                                (inputs[0]["name"], inputs[1]["name"], output["name"]))
