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


# ---- no silent settings: an RNNSERVE_* variable that is not a setting stops the server ------------------

UNKNOWN = [
    # a typo at the top level (the group's name): the HTTP port would silently stay 3000
    ("RNNSERVE_SERVR__HTTP_PORT", "RNNSERVE_SERVR__HTTP_PORT (did you mean RNNSERVE_SERVER__HTTP_PORT?)"),
    # a typo in a nested group: TLS would silently stay off
    ("RNNSERVE_SERVER__TLS_CRT", "RNNSERVE_SERVER__TLS_CRT (did you mean RNNSERVE_SERVER__TLS_CERT?)"),
    # a removed variable: the CI switch that used to live under the prefix
    ("RNNSERVE_REQUIRE_E2E_TOOLS", "RNNSERVE_REQUIRE_E2E_TOOLS (the test-suite's CI switch, renamed "
                                   "REQUIRE_E2E_TOOLS: not a server setting)"),
]


@pytest.mark.parametrize("variable, expected", UNKNOWN)
def test_an_unknown_variable_stops_rnnserve_serve_naming_the_closest_setting(home, variable, expected):
    result = serve(home, **{variable: "/x"})
    line = assert_failed_fast(result, f"unknown setting {expected}", *result[2:])
    assert line.endswith("every RNNSERVE_* variable must be a setting (docs/OPERATIONS.md, \"Settings\")")


@pytest.mark.parametrize("variable, expected", UNKNOWN[:2])
def test_an_unknown_variable_stops_a_plain_bentoml_serve(home, variable, expected):
    """The bento's own way to start (what the container image runs): the service module reads the
    settings at import, so the same line and status come from there."""
    http = free_port()
    env = {**os.environ, "BENTOML_HOME": str(home), "RNNSERVE_MODEL__NAME": "tiny", variable: "/x",
           "RNNSERVE_SERVER__HTTP_PORT": str(http), "RNNSERVE_SERVER__GRPC_PORT": str(free_port())}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bentoml", "serve", "rnnserve.service.bento:RNNService", "--port",
                          str(http)], env=env, capture_output=True, text=True, timeout=EXIT_LIMIT_S + 30)
    assert_failed_fast((out, time.perf_counter() - started), f"unknown setting {expected}", http)


def test_internal_variables_under_an_underscore_are_not_settings(home):
    """The start-up report file's variable (_RNNSERVE_STARTUP_REPORT) is not under the prefix: a server
    started with it set (as its own workers are) still starts, and fails only for the bad model."""
    result = serve(home, _RNNSERVE_STARTUP_REPORT=str(home / "report.txt"), RNNSERVE_MODEL__NAME="nosuchmodel")
    assert_failed_fast(result, "'nosuchmodel:latest' is not in the BentoML model store", *result[2:])


# ---- TLS files and restricted-API values are checked before anything binds -------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from rnnserve.harness.certs import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))


def test_an_unreadable_certificate_stops_the_server(home, tls_files, tmp_path):
    result = serve(home, RNNSERVE_SERVER__TLS_CERT=str(tmp_path / "missing.crt"),
                   RNNSERVE_SERVER__TLS_KEY=str(tls_files.server.key))
    assert_failed_fast(result, f"cannot read RNNSERVE_SERVER__TLS_CERT={tmp_path / 'missing.crt'}: No such file",
                       *result[2:])


def test_a_key_that_does_not_match_the_certificate_stops_the_server(home, tls_files):
    result = serve(home, RNNSERVE_SERVER__TLS_CERT=str(tls_files.server.cert),
                   RNNSERVE_SERVER__TLS_KEY=str(tls_files.client.key))
    assert_failed_fast(result, "is not the key of the certificate RNNSERVE_SERVER__TLS_CERT=", *result[2:])


def test_a_certificate_without_its_key_stops_the_server(home, tls_files):
    result = serve(home, RNNSERVE_SERVER__TLS_CERT=str(tls_files.server.cert))
    assert_failed_fast(result, "server.tls_cert is set without server.tls_key", *result[2:])


def test_an_unreadable_restricted_api_value_stops_the_server_without_showing_values(home, tmp_path):
    spec = f"statistics:x-admin=hunter2;inference:x-api-key=@{tmp_path}/k"
    result = serve(home, RNNSERVE_SERVER__RESTRICTED_API=spec)
    line = assert_failed_fast(result, "invalid setting RNNSERVE_SERVER__RESTRICTED_API: cannot read the value of key "
                                      f"'x-api-key' from {tmp_path}/k", *result[2:])
    assert "hunter2" not in result[0].stderr + result[0].stdout and line
