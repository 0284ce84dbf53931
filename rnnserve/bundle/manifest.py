"""The model bundle: what ``export`` writes and ``service`` loads.

A bundle is a directory in the BentoML model store (``<name>:<version>``) holding the ONNX graph,
the TorchScript module, ``manifest.json`` (spec, I/O, labels, normalisation, versions, sha256 of
every other file), ``parity.json`` (+ plot), ``reference.json`` (drift reference), ``golden.json``
(held-out inputs with their eager outputs: the round-trip check) and the training history.
Loading verifies every sha256 before anything is used.

Unidirectional models also carry a state-carrying graph (``streaming.onnx``, described by the
manifest's ``streaming`` section and read here as a ``StreamingSpec``); bidirectional models and
bundles of format 1 have ``streaming: null`` and cannot stream.

This module is what ``service`` needs of a bundle (manifest, verification, loading, I/O names), so it
imports neither torch nor onnx: the server never loads the training stack.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from .signature import Signature

INPUT_NAMES = ("x", "lengths")  # the ONNX graph's inputs: padded batch [B, T, F], lengths [B]
OUTPUT_NAME = "output"  # logits (classifier) or values (regressor) [B, O]
DEFAULT_OPSET = 17

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
STREAMING_FILE = "streaming.onnx"
# 2: adds the ``streaming`` section (null for models that cannot stream). Format 1 bundles (no
# section) still load; they simply do not stream.
FORMAT_VERSION = 2
# 3: a user's own module (``rnnserve.export.export_model``): the ``signature`` section says what it takes
# and returns (token ids or features, per sequence or per step, vocabulary, equal-length batching).
MODULE_FORMAT_VERSION = 3
SUPPORTED_FORMATS = (1, 2, 3)
STATE_LAYOUT = "batch-major"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, or does not match its manifest."""


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor of the streaming graph: ``[B, size]`` float32, batch-major (row b
    is the state of the sequence in row b of ``x``). Fed as ``input``, returned as ``output``."""

    layer: int
    kind: Literal["h", "c"]
    input: str
    output: str
    size: int
    datatype: str = "FP32"

    @property
    def shape(self) -> tuple[int, int]:
        return (-1, self.size)

    def to_manifest(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "input": self.input, "output": self.output,
                "shape": list(self.shape), "datatype": self.datatype}


@dataclass(frozen=True)
class StreamingSpec:
    """The state-carrying graph: ``(x[B, T, F], lengths[B], *state inputs) -> (output[B, O],
    *state outputs)``. Every state output is the state after exactly ``lengths[b]`` steps from the
    state fed in; ``output`` is the head on the last layer's ``h`` output. All-zero states give the
    answer of the plain graph. ``lengths[b]`` must be in ``1..T``: a row of length 0 comes back
    with a zero state (ONNX Runtime), not with the state it was given."""

    file: str
    inputs: tuple[str, str]  # padded chunk [B, T, F] (raw features), lengths [B] int64
    output: str
    states: tuple[StateTensor, ...]
    layout: str = STATE_LAYOUT
    # Input steps per recurrent step (the model's ``frame``): a stream's state exists only at
    # whole frames, so every chunk but a stream's last must be a multiple of ``frame`` steps.
    frame: int = 1

    @property
    def state_inputs(self) -> tuple[str, ...]:
        return tuple(s.input for s in self.states)

    @property
    def state_outputs(self) -> tuple[str, ...]:
        return tuple(s.output for s in self.states)

    def zero_states(self, batch: int) -> tuple[np.ndarray, ...]:
        """Initial (all-zero) state tensors for ``batch`` new sequences, in ``states`` order."""
        return tuple(np.zeros((batch, s.size), dtype=np.float32) for s in self.states)

    def to_manifest(self, num_features: int, num_outputs: int, x_datatype: str = "FP32", x_shape: list | None = None,
                    output_shape: list | None = None) -> dict:
        """The manifest's ``streaming`` section; ``x_*`` / ``output_shape`` where the graph's input is not
        float features ``[B, T, F]`` or its output not ``[B, O]`` (token ids, per-step outputs)."""
        state_io = [{"name": s.input, "datatype": s.datatype, "shape": list(s.shape)} for s in self.states]
        state_out = [{"name": s.output, "datatype": s.datatype, "shape": list(s.shape)} for s in self.states]
        return {
            "file": self.file,
            "layout": self.layout,
            "layout_note": "every state tensor is [B, H] float32; row b is the state of the sequence in "
                           "row b of x (gather / scatter rows to batch streams)",
            "inputs": [
                {"name": self.inputs[0], "datatype": x_datatype, "shape": x_shape or [-1, -1, num_features]},
                {"name": self.inputs[1], "datatype": "INT64", "shape": [-1]},
                *state_io,
            ],
            "outputs": [{"name": self.output, "datatype": "FP32", "shape": output_shape or [-1, num_outputs]},
                        *state_out],
            "states": [s.to_manifest() for s in self.states],
            "initial_state": "zeros",
            "lengths": "1 <= lengths[b] <= T; states come back after exactly lengths[b] steps; "
                       "a row of length 0 comes back with a zero state, not its input state",
            "frame": self.frame,
            "frame_note": "input steps read as one recurrent step; a chunk that is not a multiple of "
                          "frame steps zero-pads its last frame, so only a stream's last chunk may be",
        }

    @classmethod
    def from_manifest(cls, section: dict) -> StreamingSpec:
        """Parse the manifest's ``streaming`` section; a malformed one raises ``BundleError`` naming
        the field."""

        def need(obj: dict, key: str, where: str, kind: type | tuple[type, ...]):
            if not isinstance(obj, dict) or key not in obj:
                raise BundleError(f"bundle manifest field {where}.{key} is missing")
            value = obj[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise BundleError(f"bundle manifest field {where}.{key} has the wrong type ({type(value).__name__})")
            return value

        where = "streaming"
        file = need(section, "file", where, str)
        layout = need(section, "layout", where, str)
        if layout != STATE_LAYOUT:
            raise BundleError(f"bundle manifest field streaming.layout is {layout!r}; this reader knows "
                              f"only {STATE_LAYOUT!r}")
        inputs = need(section, "inputs", where, list)
        outputs = need(section, "outputs", where, list)
        if len(inputs) < 2 or len(outputs) < 1:
            raise BundleError("bundle manifest field streaming.inputs/outputs lists too few tensors")
        names_in = [need(t, "name", f"{where}.inputs[{i}]", str) for i, t in enumerate(inputs)]
        names_out = [need(t, "name", f"{where}.outputs[{i}]", str) for i, t in enumerate(outputs)]
        states = []
        for i, raw in enumerate(need(section, "states", where, list)):
            at = f"{where}.states[{i}]"
            kind = need(raw, "kind", at, str)
            if kind not in ("h", "c"):
                raise BundleError(f"bundle manifest field {at}.kind is {kind!r}, expected 'h' or 'c'")
            shape = need(raw, "shape", at, list)
            if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 1:
                raise BundleError(f"bundle manifest field {at}.shape is {shape!r}, expected [-1, H]")
            datatype = need(raw, "datatype", at, str)
            if datatype != "FP32":
                raise BundleError(f"bundle manifest field {at}.datatype is {datatype!r}, expected 'FP32'")
            state = StateTensor(need(raw, "layer", at, int), kind, need(raw, "input", at, str),
                                need(raw, "output", at, str), shape[1], datatype)
            if state.input not in names_in or state.output not in names_out:
                raise BundleError(f"bundle manifest field {at} names tensors that streaming.inputs/outputs "
                                  f"do not list ({state.input!r}, {state.output!r})")
            states.append(state)
        if not states:
            raise BundleError("bundle manifest field streaming.states is empty")
        if len({(s.layer, s.kind) for s in states}) != len(states):
            raise BundleError("bundle manifest field streaming.states lists a (layer, kind) twice")
        frame = need(section, "frame", where, int) if "frame" in section else 1  # absent before frames
        if frame < 1:
            raise BundleError(f"bundle manifest field streaming.frame is {frame}, expected >= 1")
        return cls(file, (names_in[0], names_in[1]), names_out[0], tuple(states), layout, frame)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def input_names(self) -> tuple[str, str | None]:
        """The graph's input names: (padded batch, lengths; None when the graph takes no lengths)."""
        sig = self.signature
        return sig.input.graph, sig.lengths.graph

    @property
    def output_name(self) -> str:
        return self.signature.output.graph

    @property
    def num_outputs(self) -> int:
        return self.signature.num_outputs

    @property
    def num_features(self) -> int:
        return self.signature.num_features

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("labels", ()))

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @cached_property
    def signature(self) -> Signature:
        """The model's inputs and outputs, wire names mapped from the graph's own."""
        return Signature.from_manifest(self.manifest)

    @cached_property
    def streaming(self) -> StreamingSpec | None:
        """The state-carrying graph, or None when this bundle cannot stream (see
        ``streaming_unavailable``)."""
        section = self.manifest.get("streaming")
        return None if section is None else StreamingSpec.from_manifest(section)

    @property
    def streaming_unavailable(self) -> str | None:
        """Why this bundle cannot stream (None when it can)."""
        if self.manifest.get("streaming") is not None:
            return None
        if self.manifest.get("format_version") == 1:
            return "the bundle predates streaming (format 1): export it again to add a streaming graph"
        return self.manifest.get("streaming_unavailable") or "the bundle has no streaming graph"

    @property
    def streaming_path(self) -> Path | None:
        spec = self.streaming
        return None if spec is None else self.path / spec.file

    def read_json(self, filename: str) -> dict:
        return json.loads((self.path / filename).read_text())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "bentoml", "numpy"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # pragma: no cover - optional runtime
            pass
    return out


def _parity_summary(parity: dict) -> dict:
    """What the manifest keeps of parity.json: passed, tolerance, max abs error (and the chunked gate's)."""
    summary = {"passed": parity["passed"], "atol": parity["atol"], "max_abs": parity["max_abs"]}
    if parity.get("streaming") is not None:
        chunked = parity["streaming"]
        summary["streaming"] = {"passed": chunked["passed"], "max_abs": chunked["max_abs"],
                                "max_abs_upto_100": chunked["max_abs_upto_100"]}
    return summary


def build_manifest(*, name, version, spec, labels, normalisation, metrics, dataset,
                   train_lengths, files: dict[str, str], parity: dict,
                   streaming: dict | None = None, streaming_unavailable: str | None = None) -> dict:
    """``streaming``: ``StreamingSpec.to_manifest()`` of the bundle's state-carrying graph, or None
    with ``streaming_unavailable`` saying why the model cannot stream."""
    if (streaming is None) == (streaming_unavailable is None):
        raise ValueError("give either a streaming section or the reason there is none, not both or neither")
    out_dim = spec["output_size"]
    summary = _parity_summary(parity)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": spec["task"],
        "cell": spec["cell"],
        "bidirectional": spec["bidirectional"],
        "num_layers": spec["num_layers"],
        "hidden_size": spec["hidden_size"],
        "spec": spec,
        "inputs": [
            {"name": INPUT_NAMES[0], "datatype": "FP32", "shape": [-1, -1, spec["input_size"]]},
            {"name": INPUT_NAMES[1], "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, out_dim],
                     "meaning": "logits" if spec["task"] == "classification" else "prediction"}],
        "labels": list(labels),
        "normalisation": normalisation,
        "dataset": dataset,
        "train_lengths": list(train_lengths),
        "metrics": metrics,
        "parity": summary,
        "streaming": streaming,
        "opset": DEFAULT_OPSET,
        "library_versions": library_versions(),
        "files": files,
    }
    if streaming is None:
        manifest["streaming_unavailable"] = streaming_unavailable
    return manifest


def build_module_manifest(*, name, version, signature: Signature, task: str, module: dict, parity: dict,
                          reference_source: str, streaming: dict | None, streaming_unavailable: str | None,
                          files: dict[str, str]) -> dict:
    """Format 3: a user's module. ``module``: its class and the RNNs inside; ``inputs`` / ``outputs``
    describe ``model.onnx``'s own tensors, ``signature`` what the server takes and returns."""
    graph_inputs = [{"name": t.graph, "datatype": t.datatype, "shape": list(t.shape)}
                    for t in signature.inputs if t.graph is not None]
    out = signature.output
    return {
        "format_version": MODULE_FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": task,
        "module": module,
        "signature": signature.to_section(),
        "inputs": graph_inputs,
        "outputs": [{"name": out.graph, "datatype": out.datatype, "shape": list(out.shape),
                     "meaning": "logits" if task == "classification" else "prediction"}],
        "labels": list(signature.labels),
        "reference": reference_source,
        "parity": _parity_summary(parity),
        "streaming": streaming,
        **({} if streaming is not None else {"streaming_unavailable": streaming_unavailable}),
        "opset": DEFAULT_OPSET,
        "library_versions": library_versions(),
        "files": files,
    }


def finalise(directory: Path, manifest_fields: dict, build=build_manifest) -> dict:
    """Hash every file in ``directory`` and write the manifest (``build(files=..., **fields)``) next
    to them."""
    files = {
        p.name: sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    manifest = build(files=files, **manifest_fields)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def store(staging: Path, name: str, manifest_fields: dict, build=build_manifest, version: str | None = None,
          tags: dict | None = None) -> Bundle:
    """Copy a staged bundle directory into the BentoML model store as ``name:<version or a new one>``,
    its manifest written by ``build``; ``tags``: the store entry's labels and metadata."""
    import bentoml

    if tags is None:  # the project's own models (format 2)
        spec = manifest_fields["spec"]
        tags = {"labels": {"framework": "onnx", "task": spec["task"]},
                "metadata": {"cell": spec["cell"], "dataset": manifest_fields["dataset"]}}
    with bentoml.models.create(f"{name}:{version}" if version else name, **tags) as ref:
        target = Path(ref.path)
        for item in staging.iterdir():
            if item.is_file():
                shutil.copy2(item, target / item.name)
        finalise(target, {**manifest_fields, "name": name, "version": str(ref.tag.version)}, build)
    return verify(Path(bentoml.models.get(ref.tag).path))  # the stored copy, not the staging dir


def verify(path: Path) -> Bundle:
    """Load a bundle directory, checking that every file in the manifest exists and matches."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle at {path} has no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle manifest {manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format_version") not in SUPPORTED_FORMATS:
        raise BundleError(f"bundle format {manifest.get('format_version')} is not supported "
                          f"(this version reads formats {', '.join(map(str, SUPPORTED_FORMATS))})")
    for required in (ONNX_FILE, "reference.json", "parity.json", "golden.json"):
        if required not in manifest.get("files", {}):
            raise BundleError(f"bundle manifest lists no {required}")
    for filename, expected in manifest["files"].items():
        file = path / filename
        if not file.is_file():
            raise BundleError(f"bundle file {filename} is missing from {path}")
        actual = sha256(file)
        if actual != expected:
            raise BundleError(
                f"bundle file {filename} is corrupt: sha256 {actual[:12]}... "
                f"does not match the manifest's {expected[:12]}..."
            )
    if not manifest.get("parity", {}).get("passed"):
        raise BundleError("bundle did not pass the parity gate")
    bundle = Bundle(path, manifest)
    spec = bundle.streaming  # parses (and so validates) the streaming section
    if spec is not None:
        if spec.file not in manifest["files"]:
            raise BundleError(f"bundle manifest lists no {spec.file} (the streaming graph)")
        if not manifest["parity"].get("streaming", {}).get("passed"):
            raise BundleError("bundle's streaming graph did not pass the chunked parity gate")
    return bundle


def _store_ref(tag: str):
    """The BentoML model store's entry for ``name[:version|latest]`` (raises BundleError)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound as exc:
        name = tag.split(":")[0]
        raise BundleError(
            f"model {tag!r} is not in the BentoML model store: train and export it first "
            f"(`rnnserve train --name {name}`, then `rnnserve export --name {name}`)"
        ) from exc


def resolve_tag(tag: str) -> str:
    """``name:version`` of ``name[:version|latest]`` in the BentoML model store (raises BundleError)."""
    return str(_store_ref(tag).tag)


def load(tag: str) -> Bundle:
    """Resolve ``name[:version]`` in the BentoML model store (or a directory path) and verify it."""
    candidate = Path(tag)
    if candidate.is_dir():
        return verify(candidate)
    return verify(Path(_store_ref(tag).path))


def golden(sequences, outputs: np.ndarray) -> dict:
    return {
        "sequences": [s.tolist() for s in sequences],
        "outputs": np.asarray(outputs).tolist(),
    }
