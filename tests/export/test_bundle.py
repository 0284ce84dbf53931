import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rnnserve.bundle.manifest import BundleError, load, verify
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
        from rnnserve.bundle.manifest import load
        from rnnserve.bundle.batch import pad
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

    train_to_dir("synthetic", tmp_path, TrainConfig(hidden_size=8, epochs=1, refit=False), baseline=False)
    impossible = ParityConfig(atol=0.0, stream_atol=0.0, noise_factor=0.0, max_length=50, max_batch=4)
    with pytest.raises(ParityError, match="refusing to package") as err:
        export_bundle(tmp_path / CHECKPOINT, "never-stored", impossible)
    # both gates report, each naming its cases
    assert "\nchunked parity gate failed" in str(err.value) and "onnx-streaming: case 'whole-sequences-b4'" in str(
        err.value)
    assert not [m for m in bentoml.models.list() if m.tag.name == "never-stored"]


def test_golden_outputs_are_eager_outputs(tiny_bundle):
    g = tiny_bundle.read_json("golden.json")
    assert len(g["sequences"]) == len(g["outputs"]) == 16
    assert np.asarray(g["outputs"]).shape == (16, 3)


# --- the streaming section ---------------------------------------------------------------------

def test_tiny_bundle_carries_a_streaming_graph_that_passed_the_chunked_gate(tiny_bundle):
    m = tiny_bundle.manifest
    assert m["format_version"] == 2 and "streaming.onnx" in m["files"] and "streaming_unavailable" not in m
    spec = tiny_bundle.streaming
    assert spec.file == "streaming.onnx" and tiny_bundle.streaming_path.is_file()
    assert spec.inputs == ("x", "lengths") and spec.output == "output" and spec.layout == "batch-major"
    assert [(s.layer, s.kind, s.input, s.output, s.shape) for s in spec.states] == [
        (0, "h", "h_l0_in", "h_l0_out", (-1, 16)), (0, "c", "c_l0_in", "c_l0_out", (-1, 16))]
    section = m["streaming"]
    assert [i["name"] for i in section["inputs"]] == ["x", "lengths", "h_l0_in", "c_l0_in"]
    assert [o["name"] for o in section["outputs"]] == ["output", "h_l0_out", "c_l0_out"]
    assert section["outputs"][0]["shape"] == [-1, 3] and section["inputs"][2]["datatype"] == "FP32"
    assert m["parity"]["streaming"]["passed"] and m["parity"]["streaming"]["max_abs"] <= 1e-5
    assert section["plain_requests"]["max_abs_vs_plain_graph"] <= 1e-6  # zero state = the plain graph
    chunked = tiny_bundle.read_json("parity.json")["streaming"]
    assert chunked["passed"] and {c["case"] for c in chunked["cases"]} >= {"whole-sequences-b16", "random-chunks-300"}
    assert tiny_bundle.streaming_unavailable is None


def test_a_torch_free_reader_streams_the_bundle_chunk_by_chunk(tiny_bundle, bentoml_home):
    """What the server will do, from the manifest alone: feed the golden sequences in chunks with
    the state carried, and get the plain graph's whole-sequence answers."""
    script = textwrap.dedent("""
        import json, sys, numpy as np, onnxruntime as ort
        from rnnserve.bundle.manifest import load
        b = load("tiny:latest")
        spec = b.streaming
        s = ort.InferenceSession(str(b.streaming_path), providers=["CPUExecutionProvider"])
        golden = b.read_json("golden.json")
        err = 0.0
        for seq, want in zip(golden["sequences"], golden["outputs"]):
            seq = np.asarray(seq, dtype=np.float32)
            states, at, size = spec.zero_states(1), 0, 1
            while at < len(seq):
                chunk = seq[None, at : at + size]
                feed = {spec.inputs[0]: chunk, spec.inputs[1]: np.array([chunk.shape[1]]),
                        **dict(zip(spec.state_inputs, states))}
                got = s.run([spec.output, *spec.state_outputs], feed)
                states, at, size = got[1:], at + chunk.shape[1], size + 2
            err = max(err, float(np.abs(got[0][0] - np.asarray(want)).max()))
        heavy = sorted(m for m in ("torch", "onnx", "aeon", "scipy", "matplotlib") if m in sys.modules)
        print(json.dumps({"err": err, "heavy": heavy}))
    """)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["err"] <= 1e-5


def _copy(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def test_format_1_bundle_without_a_streaming_section_loads_and_does_not_stream(tiny_bundle, tmp_path):
    copy, m = _copy(tiny_bundle, tmp_path)
    m["format_version"] = 1
    del m["streaming"], m["parity"]["streaming"], m["files"]["streaming.onnx"]
    (copy / "streaming.onnx").unlink()
    (copy / "manifest.json").write_text(json.dumps(m))
    old = verify(copy)
    assert old.streaming is None and old.streaming_path is None
    assert "predates streaming (format 1)" in old.streaming_unavailable
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle format 99 is not supported"):
        verify(copy)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["states"][1].update(kind="x"), r"streaming.states\[1\].kind is 'x'"),
    (lambda s: s["states"][0].pop("output"), r"streaming.states\[0\].output is missing"),
    (lambda s: s["states"][0].update(shape=[-1]), r"streaming.states\[0\].shape"),
    (lambda s: s["states"][0].update(input="nope"), r"streaming.states\[0\] names tensors"),
    (lambda s: s.update(layout="layer-major"), r"streaming.layout is 'layer-major'"),
    (lambda s: s.update(states=[s["states"][0], s["states"][0]]), r"lists a \(layer, kind\) twice"),
    (lambda s: s.update(file=7), r"streaming.file has the wrong type"),
])
def test_malformed_streaming_section_is_refused_naming_the_field(tiny_bundle, tmp_path, edit, message):
    copy, m = _copy(tiny_bundle, tmp_path)
    edit(m["streaming"])
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message):
        verify(copy)


def test_streaming_bundle_needs_its_graph_and_a_passed_chunked_gate(tiny_bundle, tmp_path):
    copy, m = _copy(tiny_bundle, tmp_path)
    m["parity"]["streaming"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="did not pass the chunked parity gate"):
        verify(copy)
    m["parity"]["streaming"]["passed"] = True
    del m["files"]["streaming.onnx"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="lists no streaming.onnx"):
        verify(copy)


def test_bidirectional_bundle_is_marked_non_streamable(tmp_path, bentoml_home):
    config = TrainConfig(hidden_size=8, num_layers=1, bidirectional=True, epochs=1, refit=False)
    train_to_dir("synthetic", tmp_path, config, baseline=False)
    b = export_bundle(tmp_path / CHECKPOINT, "tiny-bidirectional", ParityConfig(max_length=50, max_batch=4))
    assert b.manifest["streaming"] is None and b.streaming is None and "streaming" not in b.manifest["parity"]
    assert "bidirectional" in b.manifest["streaming_unavailable"] == b.streaming_unavailable
    assert "streaming.onnx" not in b.manifest["files"] and not (b.path / "streaming.onnx").exists()
    assert b.read_json("parity.json")["streaming"] is None
