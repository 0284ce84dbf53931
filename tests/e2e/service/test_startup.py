"""Start-up failures: the real `rnnserve serve` exits non-zero within seconds with one line that names
the cause, no traceback, and nothing left listening."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnserve.bundle.manifest import MANIFEST, sha256
from rnnserve.harness.launch import free_port
from rnnserve.service.startup import describe, settings_error

pytestmark = pytest.mark.e2e
EXIT_LIMIT_S = 30


@pytest.fixture
def home(tiny_bundle, tmp_path) -> Path:
    """A BentoML home of this test's own holding a copy of the tiny bundle (free to damage)."""
    home = tmp_path / "bentoml"
    shutil.copytree(Path(tiny_bundle.path).parent, home / "models" / "tiny", symlinks=True)
    return home


def bundle_dir(home: Path) -> Path:
    (version,) = [p for p in (home / "models" / "tiny").iterdir() if p.is_dir()]
    return version


def rewrite(home: Path, filename: str, data: bytes) -> None:
    """Replace a bundle file and re-sign it in the manifest, so only the content is wrong."""
    directory = bundle_dir(home)
    (directory / filename).write_bytes(data)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][filename] = sha256(directory / filename)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def serve(home: Path, **settings: str) -> tuple[subprocess.CompletedProcess, float, int, int]:
    http, grpc = int(settings.pop("http", free_port())), int(settings.pop("grpc", free_port()))
    env = {**os.environ, "BENTOML_HOME": str(home), "RNNSERVE_MODEL__NAME": "tiny",
           "RNNSERVE_SERVER__HTTP_PORT": str(http), "RNNSERVE_SERVER__GRPC_PORT": str(grpc), **settings}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "rnnserve.cli", "serve"], env=env, capture_output=True, text=True,
                         timeout=EXIT_LIMIT_S + 30)
    return out, time.perf_counter() - started, http, grpc


def closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def assert_failed_fast(result, message: str, *ports: int) -> str:
    out, seconds, *_ = result
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert seconds <= EXIT_LIMIT_S, seconds
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("[rnnserve] error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert message in errors[0], errors[0]
    assert all(closed(p) for p in ports if p), "something is still listening"
    return errors[0]


def test_model_not_in_the_store(home):
    result = serve(home, RNNSERVE_MODEL__NAME="nosuchmodel")
    line = assert_failed_fast(result, "'nosuchmodel:latest' is not in the BentoML model store", *result[2:])
    assert "rnnserve export --name nosuchmodel" in line


def test_corrupt_bundle_names_the_file(home):
    onnx = bundle_dir(home) / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    result = serve(home)
    line = assert_failed_fast(result, "model.onnx is corrupt", *result[2:])
    assert "rnnserve export --name tiny" in line


@pytest.mark.parametrize("variable, value, expected", [
    ("RNNSERVE_BATCHING__BUCKETING", "fastest",
     "RNNSERVE_BATCHING__BUCKETING='fastest': Input should be 'cost' or 'none'"),
    ("RNNSERVE_SERVER__WORKERS", "0", "RNNSERVE_SERVER__WORKERS='0': Input should be greater than or equal to 1"),
])
def test_invalid_setting_names_the_variable_and_what_it_accepts(home, variable, value, expected):
    result = serve(home, **{variable: value})
    assert_failed_fast(result, expected, *result[2:])


@pytest.mark.parametrize("which", ["http", "grpc"])
def test_port_already_in_use_names_the_port(home, which):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = serve(home, **{which: str(port)})
        name = "HTTP" if which == "http" else "gRPC"
        assert_failed_fast(result, f"{name} port {port} on 127.0.0.1 is already in use")
    other = result[3] if which == "http" else result[2]
    assert closed(other)


def test_cuda_requested_without_cuda(home):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has CUDA")
    result = serve(home, RNNSERVE_RUNTIME__PROVIDER="cuda")
    assert_failed_fast(result, "runtime.provider=cuda but ONNX Runtime offers only", *result[2:])


def test_onnx_runtime_cannot_load_the_graph(home):
    from rnnserve.bundle.manifest import verify

    served = verify(bundle_dir(home)).streaming  # a unidirectional model is served by its streaming graph
    rewrite(home, served.file if served else "model.onnx", b"this is not an ONNX protobuf")
    result = serve(home)
    assert_failed_fast(result, "ONNX Runtime cannot load the model graph", *result[2:])


def test_golden_self_test_fails(home):
    directory = bundle_dir(home)
    golden = json.loads((directory / "golden.json").read_text())
    golden["outputs"] = [[v + 1.0 for v in row] for row in golden["outputs"]]
    rewrite(home, "golden.json", json.dumps(golden).encode())
    result = serve(home)
    assert_failed_fast(result, "self-test failed", *result[2:])


def test_messages_for_exceptions_name_cause_and_fix():
    from pydantic import ValidationError

    from rnnserve.bundle.manifest import BundleError
    from rnnserve.service.settings import Settings

    with pytest.raises(ValidationError) as info:
        Settings(limits={"max_length": -1})
    assert settings_error(info.value).startswith("invalid setting RNNSERVE_LIMITS__MAX_LENGTH")
    assert "re-export" in describe(BundleError("bundle file golden.json is missing"), "m:1")
    assert describe(OSError(98, "Address already in use")).startswith("a port is already in use")
