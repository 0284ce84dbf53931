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
    vocab_size: int | None = None  # token-id inputs: ids are 0..vocab_size-1
    # Right-padding changes the model's answers (a graph without lengths that reads the last step):
    # the server batches only sequences of equal length together.
    equal_lengths: bool = False
    # Roles, set once from the above (plain attributes: they are read per request)
    input: TensorSpec = field(init=False, repr=False, compare=False)  # the sequence input
    lengths: TensorSpec = field(init=False, repr=False, compare=False)
    output: TensorSpec = field(init=False, repr=False, compare=False)  # the graph's raw output
    classifier: bool = field(init=False, repr=False, compare=False)
    tokens: bool = field(init=False, repr=False, compare=False)  # integer token ids [B, T], not features
    num_features: int = field(init=False, repr=False, compare=False)  # 0 for token ids
    num_outputs: int = field(init=False, repr=False, compare=False)
    per_step: bool = field(init=False, repr=False, compare=False)
    _names: np.ndarray = field(init=False, repr=False, compare=False)  # label tensor values (BYTES)

    def __post_init__(self) -> None:
        x = self.inputs[0]
        roles = {"input": x, "lengths": self.inputs[1], "output": self.outputs[0],
                 "classifier": bool(self.labels), "tokens": x.datatype != "FP32",
                 "num_features": x.shape[2] if len(x.shape) == 3 else 0,
                 "num_outputs": _values_per_row(self.outputs[0]), "per_step": self.outputs[0].per_step,
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

    def unpack(self, rows: np.ndarray, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Packed rows ``[B, ...]`` -> the named output tensors, in signature order (``label``: an
        object array of the class names as bytes, Triton's BYTES elements). Per step, ``lengths``
        marks each row's steps: the label past them is empty (the values there are zero)."""
        if not self.classifier:
            return {self.output.name: rows}
        n = self.num_outputs
        raw = rows[..., :n]
        label = self._names[raw.argmax(axis=-1)]
        if self.per_step and lengths is not None:
            label[np.arange(label.shape[1])[None, :] >= lengths[:, None]] = b""
        return {self.output.name: raw, self.outputs[1].name: rows[..., n:], self.outputs[2].name: label}

    def assemble(self, rows: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
        """One request's packed rows, each from its own model run: stacked per sequence; per step, each
        cut to its own steps into ``[B, max length, ...]`` with zeros past them (rows of different runs
        are padded to different lengths)."""
        if not self.per_step:
            return np.stack(rows)
        out = np.zeros((len(rows), int(lengths.max()), *rows[0].shape[1:]), dtype=np.float32)
        for dst, row, n in zip(out, rows, lengths.tolist(), strict=True):
            dst[:n] = row[:n]
        return out

    # ---- inputs ---------------------------------------------------------------------------------------

    def random_batch(self, rng: np.random.Generator, rows: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch of ``rows`` sequences of ``steps`` steps (cost-model calibration): standard normal
        features, or token ids uniform over the vocabulary."""
        if self.tokens:
            x = rng.integers(0, self.vocab_size, (rows, steps)).astype(np.int64)
        else:
            x = rng.standard_normal((rows, steps, self.num_features)).astype(np.float32)
        return x, np.full(rows, steps, dtype=np.int64)

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def for_features(cls, num_features: int, num_outputs: int, labels=(), graph=("x", "lengths", "output")
                     ) -> Signature:
        """Float features ``[B, T, F]`` in, one row ``[B, O]`` per sequence out: the models of bundle
        formats 1 and 2 (``graph``: the graph's names for the sequence, its lengths and its output)."""
        return cls.build(tokens=False, num_features=num_features, num_outputs=num_outputs, per_step=False,
                         labels=labels, graph=graph)

    @classmethod
    def build(cls, *, tokens: bool, num_features: int, num_outputs: int, per_step: bool, step_values: bool = False,
              labels=(), vocab_size: int | None = None, takes_lengths: bool = True, equal_lengths: bool = False,
              graph=("x", "lengths", "output")) -> Signature:
        """Any served model's signature: float features ``[B, T, F]`` or token ids ``[B, T]`` in (with
        ``lengths`` accepted whether or not the graph takes them: ``takes_lengths`` says); one row per
        sequence ``[B, O]`` or one per step ``[B, T, O]`` (``[B, T]`` with ``step_values``) out."""
        x, lengths, output = graph
        step = (-1,) if per_step else ()
        inputs = (TensorSpec(INPUT, "INT64", (-1, -1), graph=x) if tokens
                  else TensorSpec(INPUT, "FP32", (-1, -1, num_features), graph=x),
                  TensorSpec(LENGTHS, "INT64", (-1,), optional=True, graph=lengths if takes_lengths else None))
        values = () if step_values else (num_outputs,)
        outputs = [TensorSpec(OUTPUT, "FP32", (-1, *step, *values), per_step, graph=output)]
        if labels:
            outputs += [TensorSpec(PROBABILITIES, "FP32", (-1, *step, num_outputs), per_step),
                        TensorSpec(LABEL, "BYTES", (-1, *step), per_step)]
        return cls(tuple(inputs), tuple(outputs), tuple(labels), vocab_size if tokens else None, equal_lengths)

    def to_section(self) -> dict:
        """The manifest's ``signature`` section (bundle format 3)."""
        def entry(t: TensorSpec) -> dict:
            return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "per_step": t.per_step,
                    "optional": t.optional, "graph": t.graph}

        return {"inputs": [entry(t) for t in self.inputs], "outputs": [entry(t) for t in self.outputs],
                "labels": list(self.labels), "vocab_size": self.vocab_size,
                "batching": "equal-lengths" if self.equal_lengths else "any-lengths"}

    @classmethod
    def from_section(cls, section: dict) -> Signature:
        def spec(raw: dict) -> TensorSpec:
            return TensorSpec(raw["name"], raw["datatype"], tuple(raw["shape"]), bool(raw.get("per_step")),
                              bool(raw.get("optional")), raw.get("graph"))

        return cls(tuple(spec(t) for t in section["inputs"]), tuple(spec(t) for t in section["outputs"]),
                   tuple(section.get("labels", ())), section.get("vocab_size"),
                   section.get("batching") == "equal-lengths")

    @classmethod
    def from_manifest(cls, manifest: dict) -> Signature:
        """The signature a bundle's manifest describes: its ``signature`` section (format 3), or, for
        formats 1 and 2, the graph's ``inputs`` ``[x, lengths]`` and its one output ``[B, O]``, with
        ``labels`` for classifiers."""
        if "signature" in manifest:
            return cls.from_section(manifest["signature"])
        inputs, (output, *_) = manifest["inputs"], manifest["outputs"]
        labels = tuple(manifest.get("labels", ())) if manifest["task"] == "classification" else ()
        return cls.for_features(int(inputs[0]["shape"][2]), int(output["shape"][1]), labels,
                                (inputs[0]["name"], inputs[1]["name"], output["name"]))


def _values_per_row(output: TensorSpec) -> int:
    """O of ``[B, O]`` / ``[B, T, O]``; 1 for one value per step ``[B, T]``."""
    return output.shape[-1] if len(output.shape) == (3 if output.per_step else 2) else 1
