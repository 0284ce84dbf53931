"""The model bundle: what ``export`` writes and ``service`` loads.

A bundle is a directory in the BentoML model store (``<name>:<version>``) holding the ONNX graph,
the TorchScript module, ``manifest.json`` (spec, I/O, labels, normalisation, versions, sha256 of
every other file), ``parity.json`` (+ plot), ``reference.json`` (drift reference), ``golden.json``
(held-out inputs with their eager outputs: the round-trip check) and the training history.
Loading verifies every sha256 before anything is used.

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
from pathlib import Path

import numpy as np

INPUT_NAMES = ("x", "lengths")  # the ONNX graph's inputs: padded batch [B, T, F], lengths [B]
OUTPUT_NAME = "output"  # logits (classifier) or values (regressor) [B, O]
DEFAULT_OPSET = 17

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, or does not match its manifest."""


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
    def input_names(self) -> tuple[str, str]:
        """ONNX input names: (padded batch, lengths)."""
        names = [i["name"] for i in self.manifest["inputs"]]
        return names[0], names[1]

    @property
    def output_name(self) -> str:
        return self.manifest["outputs"][0]["name"]

    @property
    def num_outputs(self) -> int:
        return int(self.manifest["outputs"][0]["shape"][1])

    @property
    def num_features(self) -> int:
        return int(self.manifest["inputs"][0]["shape"][2])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("labels", ()))

    @property
    def task(self) -> str:
        return self.manifest["task"]

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


def build_manifest(*, name, version, spec, labels, normalisation, metrics, dataset,
                   train_lengths, files: dict[str, str], parity: dict) -> dict:
    out_dim = spec["output_size"]
    return {
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
        "parity": {"passed": parity["passed"], "atol": parity["atol"], "max_abs": parity["max_abs"]},
        "opset": DEFAULT_OPSET,
        "library_versions": library_versions(),
        "files": files,
    }


def finalise(directory: Path, manifest_fields: dict) -> dict:
    """Hash every file in ``directory`` and write the manifest next to them."""
    files = {
        p.name: sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    manifest = build_manifest(files=files, **manifest_fields)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def store(staging: Path, name: str, manifest_fields: dict) -> Bundle:
    """Copy a staged bundle directory into the BentoML model store as ``name:<new version>``."""
    import bentoml

    with bentoml.models.create(
        name, labels={"framework": "onnx", "task": manifest_fields["spec"]["task"]},
        metadata={"cell": manifest_fields["spec"]["cell"], "dataset": manifest_fields["dataset"]},
    ) as ref:
        target = Path(ref.path)
        for item in staging.iterdir():
            if item.is_file():
                shutil.copy2(item, target / item.name)
        finalise(target, {**manifest_fields, "name": name, "version": str(ref.tag.version)})
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
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle format {manifest.get('format_version')} is not supported")
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
    return Bundle(path, manifest)


def load(tag: str) -> Bundle:
    """Resolve ``name[:version]`` in the BentoML model store (or a directory path) and verify it."""
    candidate = Path(tag)
    if candidate.is_dir():
        return verify(candidate)
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        ref = bentoml.models.get(tag)
    except NotFound as exc:
        name = tag.split(":")[0]
        raise BundleError(
            f"model {tag!r} is not in the BentoML model store: train and export it first "
            f"(`rnnserve train --name {name}`, then `rnnserve export --name {name}`)"
        ) from exc
    return verify(Path(ref.path))


def golden(sequences, outputs: np.ndarray) -> dict:
    return {
        "sequences": [s.tolist() for s in sequences],
        "outputs": np.asarray(outputs).tolist(),
    }
