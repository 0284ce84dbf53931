"""Several models and versions in one real server, with stock tritonclient: two different models at
once, Triton's repository API (index / load / unload), a corrupt bundle refused on load, statistics,
and a zero-downtime version rollout under a closed loop of 32 clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp

from rnnserve.bundle.manifest import verify
from rnnserve.harness.launch import ROOT, ServerProcess
from rnnserve.harness.promtext import total

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def export(home: Path, name: str, checkpoint: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "rnnserve.cli", "export", "--name", name, "--checkpoint",
                          str(checkpoint), "--max-length", "200", "--max-batch", "8"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def versions(home: Path, name: str) -> list[Path]:
    return sorted((p for p in (home / "models" / name).iterdir() if p.is_dir() and not p.is_symlink()),
                  key=lambda p: json.loads((p / "manifest.json").read_text())["created"])


class Reference:
    """In-process ONNX Runtime for one bundle directory: what the server must answer."""

    def __init__(self, path: Path):
        self.bundle = verify(path)
        self.session = ort.InferenceSession(str(self.bundle.onnx_path), providers=["CPUExecutionProvider"])

    def __call__(self, seq: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": seq[None], "lengths": np.array([len(seq)])})[0][0]


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory):
    """A BentoML home of this module's own: the session's tiny LSTM, a GRU trained on BasicMotions
    (another aeon dataset: 6 features, 4 classes), and a checkpoint for tiny's second version."""
    from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
    from rnnserve.models.train import TrainConfig

    work = tmp_path_factory.mktemp("repo")
    home = work / "bentoml"
    shutil.copytree(Path(tiny_bundle.path).parent, home / "models" / "tiny", symlinks=True)
    motions = work / "motions"
    train_to_dir("BasicMotions", motions, TrainConfig(cell="gru", hidden_size=16, num_layers=1, epochs=3,
                                                      patience=3, refit=False, batch_size=16), baseline=False)
    export(home, "motions", motions / CHECKPOINT)
    tiny2 = work / "tiny2"
    train_to_dir("synthetic", tiny2, TrainConfig(hidden_size=16, num_layers=1, epochs=2, patience=2, refit=False,
                                                 batch_size=32, seed=7), baseline=False)
    return home, tiny2 / CHECKPOINT


@pytest.fixture(scope="module")
def two_models(repo):
    home, _ = repo
    env = {**os.environ, "BENTOML_HOME": str(home)}
    with ServerProcess("tiny", {"RNNSERVE_MODELS": "tiny,motions"}, env=env) as srv:
        yield srv


def seqs(features: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, 80)), features)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_two_different_models_answer_their_own_inputs(two_models, repo, kind):
    home, _ = repo
    mod, url = (thttp, two_models.url.removeprefix("http://")) if kind == "http" else (tgrpc, two_models.grpc_url)
    client = mod.InferenceServerClient(url)
    for name, features in (("tiny", 4), ("motions", 6)):
        reference = Reference(versions(home, name)[-1])
        meta = client.get_model_metadata(name, as_json=True) if kind == "grpc" else client.get_model_metadata(name)
        assert int(meta["inputs"][0]["shape"][2]) == features
        for s in seqs(features, 5, seed=features):
            inp = mod.InferInput("input", [1, *s.shape], "FP32")
            inp.set_data_from_numpy(s[None])
            result = client.infer(name, [inp])
            np.testing.assert_allclose(result.as_numpy("output")[0], reference(s), atol=1e-5)
            assert result.get_response(as_json=True)["model_version"] if kind == "grpc" else True
        bad = mod.InferInput("input", [1, 3, 10 - features], "FP32")  # the other model's features
        bad.set_data_from_numpy(np.zeros((1, 3, 10 - features), np.float32))
        with pytest.raises(Exception, match="400|INVALID_ARGUMENT"):
            client.infer(name, [bad])
    stats = client.get_inference_statistics("motions", as_json=True) if kind == "grpc" else \
        client.get_inference_statistics("motions")
    assert int(stats["model_stats"][0]["inference_count"]) >= 5
    text = httpx.get(two_models.url + "/metrics").text
    assert total(text, "rnnserve_model_ready", model="motions") == 1
    assert total(text, "rnnserve_model_ready", model="tiny") == 1


def test_predict_needs_a_model_name_when_several_are_served(two_models):
    r = httpx.post(two_models.url + "/predict", json={"sequences": [[[0.1, 0.2, 0.3, 0.4]] * 3]})
    assert r.status_code == 400 and r.json()["field"] == "model"
    r = httpx.post(two_models.url + "/predict?model=tiny", json={"sequences": [[[0.1, 0.2, 0.3, 0.4]] * 3]})
    assert r.status_code == 200 and r.json()["model"] == "tiny"


def test_unknown_routes_answer_errors_tritonclient_can_read(two_models):
    client = thttp.InferenceServerClient(two_models.url.removeprefix("http://"))
    with pytest.raises(Exception) as info:
        client.get_trace_settings()  # Triton's trace extension: not served here
    assert "no route GET /v2/trace/setting" in str(info.value)


def test_repository_index_load_unload_and_a_corrupt_bundle_refused(two_models, repo):
    home, _ = repo
    http = thttp.InferenceServerClient(two_models.url.removeprefix("http://"))
    grpc_client = tgrpc.InferenceServerClient(two_models.grpc_url)
    assert {(m["name"], m["state"]) for m in http.get_model_repository_index()} == {("tiny", "READY"),
                                                                                   ("motions", "READY")}
    grpc_client.unload_model("motions")
    deadline = time.time() + 30
    while time.time() < deadline and any(m["name"] == "motions" for m in http.get_model_repository_index()):
        time.sleep(0.2)  # draining, then gone
    assert not http.is_model_ready("motions") if _served(http, "motions") else True
    with pytest.raises(Exception, match="not served"):
        http.get_model_metadata("motions")
    # a corrupt bundle is refused on load and the served set is unchanged
    onnx = versions(home, "motions")[-1] / "streaming.onnx"
    original = onnx.read_bytes()
    onnx.write_bytes(original[:-10] + b"0123456789")
    try:
        with pytest.raises(Exception, match="streaming.onnx is corrupt"):
            http.load_model("motions")
        assert [m["name"] for m in http.get_model_repository_index()] == ["tiny"]
    finally:
        onnx.write_bytes(original)
    grpc_client.load_model("motions")
    assert http.is_model_ready("motions")
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == {"tiny", "motions"}


def _served(client, name) -> bool:
    return any(m["name"] == name for m in client.get_model_repository_index())


def test_zero_downtime_rollout_under_a_closed_loop_of_32_clients(two_models, repo):
    home, tiny2_checkpoint = repo
    old = Reference(versions(home, "tiny")[-1])
    data = seqs(4, 64, seed=99)
    answers: list[tuple[str, int, np.ndarray]] = []
    failures: list[str] = []
    loaded: dict = {}

    async def clients(stop: asyncio.Event):
        client = tgrpc_aio.InferenceServerClient(two_models.grpc_url)

        async def one(k: int):
            i = k
            while not stop.is_set():
                s = data[i % len(data)]
                inp = tgrpc_aio.InferInput("input", [1, *s.shape], "FP32")
                inp.set_data_from_numpy(s[None])
                try:
                    r = await client.infer("tiny", [inp])
                    answers.append((r.get_response().model_version, i % len(data), r.as_numpy("output")[0]))
                except Exception as exc:  # every failure counts
                    failures.append(str(exc))
                i += 32

        try:
            await asyncio.gather(*(one(k) for k in range(32)))
        finally:
            await client.close()

    async def main():
        stop = asyncio.Event()
        load = asyncio.create_task(clients(stop))
        await asyncio.sleep(2.0)
        await asyncio.to_thread(export, home, "tiny", tiny2_checkpoint)  # version 2 lands in the store
        started = time.perf_counter()
        await asyncio.to_thread(thttp.InferenceServerClient(two_models.url.removeprefix("http://")).load_model,
                                "tiny")
        loaded["seconds"] = time.perf_counter() - started
        await asyncio.sleep(3.0)
        stop.set()
        await load

    asyncio.run(main())
    new = Reference(versions(home, "tiny")[-1])
    assert new.bundle.version != old.bundle.version
    assert not failures, failures[:5]
    by_version = {old.bundle.version: old, new.bundle.version: new}
    wrong = [(v, i) for v, i, out in answers if not np.allclose(out, by_version[v](data[i]), atol=1e-5)]
    assert not wrong, wrong[:5]
    served = {v for v, _, _ in answers}
    assert served == {old.bundle.version, new.bundle.version}  # both answered, each naming itself
    assert answers[-1][0] == new.bundle.version
    print(f"\nrollout: {len(answers)} answers, 0 failed, 0 wrong; load + warm-up + switch took "
          f"{loaded['seconds']:.2f} s")
