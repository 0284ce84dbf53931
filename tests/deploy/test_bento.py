"""`bentoml build` works offline and the bento holds the service, the bundle and pinned requirements."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.launch import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile-gpu.yaml"])
def test_bentoml_build_packs_service_bundle_and_pins(bentofile, tiny_bundle, bentoml_home, tmp_path):
    spec = yaml.safe_load((ROOT / bentofile).read_text())
    assert spec["models"] == ["vowels:latest"] and spec["python"]["lock_packages"] is False
    spec["models"] = ["tiny:latest"]  # the session's test bundle stands in for the default model
    test_file = ROOT / f".test-{bentofile}"
    test_file.write_text(yaml.safe_dump(spec))
    try:
        env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
        out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(test_file), "--output", "tag",
                              str(ROOT)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    finally:
        test_file.unlink()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = Path(bentoml_home) / "bentos" / name / version
    assert (bento / "src" / "service" / "service.py").is_file()
    assert (bento / "src" / "export" / "bundle.py").is_file() and not (bento / "src" / "tests").exists()
    bento_yaml = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in bento_yaml["models"]] == [f"tiny:{tiny_bundle.version}"]
    # The model files travel with the bento when it is exported / containerized:
    archive = tmp_path / "bento.bento"
    out = subprocess.run([sys.executable, "-m", "bentoml", "export", tag, str(archive)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import tarfile

    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for f in ("model.onnx", "manifest.json", "reference.json"):
        assert any(n.endswith(f"models/tiny/{tiny_bundle.version}/{f}") for n in names), sorted(names)[:20]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    runtime = "onnxruntime-gpu==1.31.1" if "gpu" in bentofile else "onnxruntime==1.31.1"
    for pin in ("torch==2.13.0", "bentoml==1.4.39", runtime):
        assert pin in requirements, requirements
    assert bento_yaml["service"] == "service.service:RNNService"
    if "gpu" in bentofile:
        assert bento_yaml["docker"]["cuda_version"] == "12.6.3"
