"""Session fixtures: an isolated BentoML model store, one tiny bundle, one real server, real Redis
(one server, or a cluster)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from rnnserve.harness.launch import ServerProcess

# The store must be chosen before bentoml is first imported by any test module.
_HOME = tempfile.mkdtemp(prefix="rnnserve-test-bentoml-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

TINY = "tiny"


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(_HOME)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, bentoml_home):
    """A small LSTM trained briefly on synthetic data, exported through the real pipeline."""
    from rnnserve.export.package import export_bundle
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
    from rnnserve.models.train import TrainConfig

    work = tmp_path_factory.mktemp("tiny")
    config = TrainConfig(hidden_size=16, num_layers=1, epochs=4, patience=4, refit=False, batch_size=32)
    train_to_dir("synthetic", work, config, baseline=False)
    return export_bundle(work / CHECKPOINT, TINY, ParityConfig(max_length=300, max_batch=16))


@pytest.fixture(scope="session")
def bidirectional(tiny_bundle, tmp_path_factory) -> str:
    """A tiny bidirectional GRU bundle (cannot stream); returns its model name."""
    from rnnserve.export.package import export_bundle
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
    from rnnserve.models.train import TrainConfig

    work = tmp_path_factory.mktemp("tinybi")
    config = TrainConfig(cell="gru", bidirectional=True, hidden_size=8, num_layers=1, epochs=2, patience=2,
                         refit=False, batch_size=64)
    train_to_dir("synthetic", work, config, baseline=False)
    return export_bundle(work / CHECKPOINT, "tinybi", ParityConfig(max_length=100, max_batch=8)).name


REQUIRED = os.environ.get("REQUIRE_E2E_TOOLS") == "1"


def need_tool(binary: str, package: str | None = None) -> str:
    """The path of a Debian-packaged tool the test needs (redis-server, prometheus, promtool): skip
    without it, or fail where the end-to-end tools are required (CI)."""
    import shutil

    path = shutil.which(binary)
    if path is None:
        package = package or binary
        if REQUIRED:
            pytest.fail(f"{binary} is required in CI (make tools installs the Debian package {package})")
        pytest.skip(f"{binary} not installed: run `make tools` (Debian package {package})")
    return path


def need_redis() -> None:
    need_tool("redis-server")


@pytest.fixture
def redis_server():
    """A fresh, empty redis-server on a free loopback port, for one test (it may stop or restart it)."""
    from rnnserve.harness.redis import RedisServer

    need_redis()
    with RedisServer() as srv:
        yield srv


def need_redis_cluster() -> None:
    need_tool("redis-server")
    need_tool("redis-cli", "redis-tools")


@pytest.fixture
def redis_cluster():
    """A fresh Redis Cluster, 3 primaries + 3 replicas on free loopback ports, for one test (it may kill
    nodes: a killed primary's replica takes over ~2-3 s later)."""
    from rnnserve.harness.rediscluster import RedisClusterServer

    need_redis_cluster()
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def shared_redis_cluster():
    """One Redis Cluster for the tests that leave its nodes alone; ``flushed_redis_cluster`` empties it."""
    from rnnserve.harness.rediscluster import RedisClusterServer

    need_redis_cluster()
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture
def flushed_redis_cluster(shared_redis_cluster):
    """The session's Redis Cluster, emptied for this test."""
    for port in shared_redis_cluster.primaries():
        with shared_redis_cluster.client(port) as c:
            c.flushall()
    return shared_redis_cluster


def start_server(model: str, **settings: str) -> ServerProcess:
    return ServerProcess(model, settings)


@pytest.fixture(scope="session")
def server(tiny_bundle):
    srv = start_server(TINY)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def reference(tiny_bundle):
    """In-process ONNX Runtime on one sequence alone, unpadded: what the server must reproduce."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_bundle.onnx_path), providers=["CPUExecutionProvider"])

    def run(seq):
        return session.run(None, {"x": seq[None], "lengths": np.array([len(seq)])})[0][0]

    return run
