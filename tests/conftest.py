"""Session fixtures: an isolated BentoML model store, one tiny bundle, one real server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The store must be chosen before bentoml is first imported by any test module.
_HOME = tempfile.mkdtemp(prefix="rnnserve-test-bentoml-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

TINY = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(_HOME)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, bentoml_home):
    """A small LSTM trained briefly on synthetic data, exported through the real pipeline."""
    from export.package import export_bundle
    from export.parity import ParityConfig
    from models.pipeline import CHECKPOINT, train_to_dir
    from models.train import TrainConfig

    work = tmp_path_factory.mktemp("tiny")
    config = TrainConfig(hidden_size=16, num_layers=1, epochs=4, patience=4, refit=False, batch_size=32)
    train_to_dir("synthetic", work, config)
    return export_bundle(work / CHECKPOINT, TINY, ParityConfig(max_length=300, max_batch=16))


class Server:
    def __init__(self, env: dict, http_port: int, grpc_port: int) -> None:
        self.http_port, self.grpc_port = http_port, grpc_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.log = tempfile.NamedTemporaryFile(prefix="rnnserve-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group, started above
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(model: str, **settings: str) -> Server:
    http_port, grpc_port = free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "RNNSERVE_MODEL__NAME": model,
        "RNNSERVE_SERVER__HOST": "127.0.0.1",
        "RNNSERVE_SERVER__HTTP_PORT": str(http_port),
        "RNNSERVE_SERVER__GRPC_PORT": str(grpc_port),
        **settings,
    })
    return Server(env, http_port, grpc_port)


@pytest.fixture(scope="session")
def server(tiny_bundle):
    srv = start_server(TINY)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
