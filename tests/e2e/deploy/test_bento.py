"""`bentoml build` works offline; the bento holds the project wheel, the bundle and the serving
requirements only; and it serves, through plain `bentoml serve`, from a fresh environment built by
the bento's own install script (what the container image runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

from rnnserve.harness.launch import ROOT, ManagedProcess, free_port

pytestmark = pytest.mark.slow
TRAINING_STACK = ("torch", "onnx==", "aeon", "scipy", "matplotlib")


def test_the_serving_wheel_holds_no_developer_tools(wheel):
    """The bento's wheel: the serving, export, training and CLI packages, and its package data; no
    benchmarks, load tests or test harness (they stay importable from a checkout after make install)."""
    with zipfile.ZipFile(wheel) as whl:
        top = {n.split("/")[1] for n in whl.namelist() if n.startswith("rnnserve/") and n.count("/") > 1}
        names = set(whl.namelist())
    assert top == {"bundle", "cli", "export", "models", "service"}, top
    assert "rnnserve/models/search/spaces/classifier.yaml" in names


def build(bentofile: str, wheel: Path, bentoml_home: Path, tmp_path: Path) -> tuple[str, Path]:
    spec = yaml.safe_load((ROOT / bentofile).read_text())
    assert spec["models"] == ["vowels:latest"] and spec["python"]["lock_packages"] is False
    assert spec["python"]["wheels"] == [f"./dist/{wheel.name}"]
    spec["models"] = ["tiny:latest"]  # the session's test bundle stands in for the default model
    (tmp_path / "dist").mkdir(exist_ok=True)
    shutil.copy2(wheel, tmp_path / "dist" / wheel.name)  # the build context is tmp_path, as `make bento` has
    spec["include"] = []
    test_file = tmp_path / bentofile
    test_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(test_file), "--output", "tag",
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return tag, Path(bentoml_home) / "bentos" / name / version


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentofile-gpu.yaml"])
def test_bentoml_build_packs_wheel_bundle_and_serving_requirements_only(bentofile, wheel, tiny_bundle,
                                                                        bentoml_home, tmp_path):
    tag, bento = build(bentofile, wheel, bentoml_home, tmp_path)
    assert (bento / "env" / "python" / "wheels" / wheel.name).is_file()
    bento_yaml = yaml.safe_load((bento / "bento.yaml").read_text())
    assert bento_yaml["service"] == "rnnserve.service.bento:RNNService"
    assert [m["tag"] for m in bento_yaml["models"]] == [f"tiny:{tiny_bundle.version}"]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    runtime = "onnxruntime-gpu[cuda,cudnn]==1.31.1" if "gpu" in bentofile else "onnxruntime==1.31.1"
    for pin in ("bentoml==1.4.39", runtime):
        assert pin in requirements, requirements
    assert not [p for p in TRAINING_STACK if p in requirements], requirements
    if "gpu" in bentofile:
        assert not bento_yaml["docker"]["cuda_version"]  # CUDA 13 + cuDNN from the extras' nvidia-* wheels
        assert "onnxruntime==" not in requirements  # never both runtimes
        return
    # The model files travel with the bento when it is exported / containerized:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    archive = tmp_path / "bento.bento"
    out = subprocess.run([sys.executable, "-m", "bentoml", "export", tag, str(archive)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for f in ("model.onnx", "manifest.json", "reference.json"):
        assert any(n.endswith(f"models/tiny/{tiny_bundle.version}/{f}") for n in names), sorted(names)[:20]


@pytest.mark.e2e
def test_the_bento_serves_from_its_own_requirements_without_the_training_stack(wheel, tiny_bundle, bentoml_home,
                                                                               tmp_path):
    """What the container does, without Docker: a fresh venv set up by the bento's install.sh, then
    plain `bentoml serve` of the bento directory, limits and ports from the RNNSERVE_* environment."""
    _, bento = build("bentofile.yaml", wheel, bentoml_home, tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(bento / "env" / "python" / "install.sh")], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "freeze"], capture_output=True,
                            text=True, check=True).stdout.lower()
    assert "rnnserve==0.1.0" in listed and "onnxruntime==1.31.1" in listed
    assert not [p for p in ("torch", "onnx==", "aeon", "scipy", "matplotlib") if p in listed], listed
    http, grpc_port = free_port(), free_port()
    serve_env = {**env, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True",
                 "RNNSERVE_MODEL__NAME": "tiny", "RNNSERVE_SERVER__HTTP_PORT": str(http),
                 "RNNSERVE_SERVER__GRPC_PORT": str(grpc_port)}
    url = f"http://127.0.0.1:{http}"
    command = [str(venv / "bin" / "bentoml"), "serve", ".", "--host", "127.0.0.1", "--port", str(http)]
    with ManagedProcess(command, serve_env, url + "/readyz", cwd=bento, name="bento-serve"):
        r = httpx.post(url + "/predict", json={"sequences": [[[0.1, 0.2, 0.3, 0.4]] * 3]}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny" and len(r.json()["predictions"]) == 1
    bento_yaml = yaml.safe_load((bento / "bento.yaml").read_text())
    assert bento_yaml["services"][0]["config"]["workers"] == 1
