import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rnnserve.export.bundle import BundleError, load, verify
from rnnserve.export.package import export_bundle
from rnnserve.export.parity import ParityConfig, ParityError
from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
from rnnserve.models.train import TrainConfig


def test_manifest_describes_the_bundle(tiny_bundle):
    m = tiny_bundle.manifest
    assert m["name"] == "tiny" and m["version"] == tiny_bundle.version
    assert m["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, -1, 4]}
    assert m["inputs"][1]["name"] == "lengths" and m["outputs"][0]["shape"] == [-1, 3]
    assert m["labels"] == ["class_0", "class_1", "class_2"] and m["cell"] == "lstm"
    assert {"model.onnx", "model.ts", "parity.json", "reference.json", "golden.json",
            "history.json", "training.png", "parity.png"} <= set(m["files"])
    assert all(len(h) == 64 for h in m["files"].values())
    assert m["parity"]["passed"] and {"torch", "onnxruntime", "bentoml"} <= set(m["library_versions"])
    assert len(m["normalisation"]["mean"]) == 4


def test_reference_statistics(tiny_bundle):
    ref = tiny_bundle.read_json("reference.json")
    assert len(ref["features"]) == 4
    for f in ref["features"]:
        assert abs(sum(f["proportions"]) - 1) < 1e-9 and len(f["proportions"]) == len(f["edges"]) + 1
    assert ref["length"]["min"] >= 3 and ref["length"]["max"] <= 40
    assert ref["prediction"]["kind"] == "class_frequency"
    assert abs(sum(ref["prediction"]["proportions"]) - 1) < 1e-9


def test_bundle_round_trips_in_a_fresh_process(tiny_bundle, bentoml_home):
    script = textwrap.dedent("""
        import json, numpy as np, onnxruntime as ort
        from rnnserve.export.bundle import load
        from rnnserve.models.data import pad
        b = load("tiny:latest")
        g = b.read_json("golden.json")
        x, lengths = pad([np.asarray(s, dtype=np.float32) for s in g["sequences"]])
        s = ort.InferenceSession(str(b.onnx_path), providers=["CPUExecutionProvider"])
        got = s.run(None, {"x": x, "lengths": lengths})[0]
        print(json.dumps({"version": b.version, "err": float(np.abs(got - np.array(g["outputs"])).max())}))
    """)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["version"] == tiny_bundle.version and result["err"] <= 1e-5


def test_corrupt_file_is_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx is corrupt: sha256"):
        verify(copy)


def test_missing_file_and_missing_model_are_refused(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, copy)
    (copy / "reference.json").unlink()
    with pytest.raises(BundleError, match="reference.json is missing"):
        verify(copy)
    with pytest.raises(BundleError, match="not in the BentoML model store"):
        load("no-such-model:latest")


def test_export_refuses_to_package_when_parity_fails(tmp_path, bentoml_home):
    import bentoml

    train_to_dir("synthetic", tmp_path, TrainConfig(hidden_size=8, epochs=1, refit=False))
    impossible = ParityConfig(atol=0.0, noise_factor=0.0, max_length=50, max_batch=4)
    with pytest.raises(ParityError, match="refusing to package"):
        export_bundle(tmp_path / CHECKPOINT, "never-stored", impossible)
    assert not [m for m in bentoml.models.list() if m.tag.name == "never-stored"]


def test_golden_outputs_are_eager_outputs(tiny_bundle):
    g = tiny_bundle.read_json("golden.json")
    assert len(g["sequences"]) == len(g["outputs"]) == 16
    assert np.asarray(g["outputs"]).shape == (16, 3)
