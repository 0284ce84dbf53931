"""Streams of users' own modules through real servers: the state-carrying graph export_model derived
from each module's own ONNX graph (and the chunked gate proved) carries every stream's state; stock
tritonclient sends random chunks over HTTP and gRPC (Triton's sequence parameters), interleaved across
streams; every answer equals the module's eager forward on the prefix (per-sequence models) or on the
chunk's own steps (per-step models), on both batching policies and with the Redis store. Modules that
cannot stream (bidirectional, mean-pooling) refuse chunks naming why, and still answer plain requests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from rnnserve.export import export_model
from rnnserve.harness.launch import ServerProcess
from tests.export import user_models as um

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STREAMING = um.STREAMS
REFUSED = {"tagger": "bidirectional", "meanpool": "not a function of carried state"}


@pytest.fixture(scope="module")
def modules(bentoml_home):
    models = um.exportable()
    for name in (*STREAMING, *REFUSED):
        model, example, labels = models[name]
        export_model(model, f"s-{name}", example, labels=labels, max_length=120, max_batch=8)
    return {name: models[name][0].eval() for name in (*STREAMING, *REFUSED)}


@pytest.fixture(scope="module", params=["buckets", "steps", "buckets-redis", "steps-redis"])
def server(request, modules):
    settings = {"RNNSERVE_MODELS": ",".join(f"s-{n}" for n in (*STREAMING, *REFUSED)),
                "RNNSERVE_BATCHING__POLICY": request.param.split("-")[0], "RNNSERVE_BATCHING__MAX_STEPS": "4"}
    if request.param.endswith("redis"):
        from rnnserve.harness.redis import RedisServer
        from tests.conftest import need_redis

        need_redis()
        with RedisServer() as redis:
            with ServerProcess("s-tokens", {**settings, "RNNSERVE_STREAMS__STORE": redis.url}) as srv:
                yield srv
        return
    with ServerProcess("s-tokens", settings) as srv:
        yield srv


def sequences(name: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "tokens":
        return [rng.integers(0, um.VOCAB, n).astype(np.int64) for n in (23, 9, 31)]
    return [rng.standard_normal((n, um.FEATURES)).astype(np.float32) for n in (23, 9, 31)]


def eager(module, name: str, prefix: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(prefix[None])
    args = (x,) if name in um.NO_LENGTHS else (x, torch.tensor([len(prefix)]))
    with torch.no_grad():
        return module(*args)[0].numpy()


def chunked(seq: np.ndarray, rng) -> list[tuple[int, int]]:
    out, at = [], 0
    while at < len(seq):
        k = int(rng.choice([1, 2, 3, 5, 8]))
        out.append((at, min(len(seq), at + k)))
        at = out[-1][1]
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", STREAMING)
def test_streams_in_random_chunks_equal_the_module_on_each_prefix(server, modules, name, protocol):
    tc, url = (thttp, server.url.removeprefix("http://")) if protocol == "http" else (tgrpc, server.grpc_url)
    client = tc.InferenceServerClient(url)
    rng = np.random.default_rng(len(name) + len(protocol))
    seqs = sequences(name, 7)
    plans = {i: chunked(s, rng) for i, s in enumerate(seqs)}
    sent = {i: 0 for i in plans}
    worst = 0.0
    while any(sent[i] < len(plans[i]) for i in plans):  # the streams' chunks interleaved
        i = int(rng.choice([k for k in plans if sent[k] < len(plans[k])]))
        lo, hi = plans[i][sent[i]]
        chunk = seqs[i][lo:hi]
        inp = tc.InferInput("input", [1, *chunk.shape], "INT64" if name == "tokens" else "FP32")
        inp.set_data_from_numpy(chunk[None])
        sid = 1000 + i + 10 * len(protocol)
        got = client.infer(f"s-{name}", [inp], sequence_id=sid, sequence_start=sent[i] == 0,
                           sequence_end=sent[i] == len(plans[i]) - 1).as_numpy("output")[0]
        want = eager(modules[name], name, seqs[i][:hi])
        if name in um.PER_STEP:  # per step: the chunk's own steps
            want = want[lo:hi]
        worst = max(worst, float(np.abs(got - want).max()))
        sent[i] += 1
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_resent_per_step_chunk_is_answered_whole_again_and_applied_once(server, modules, protocol):
    """Each chunk sent twice with the same sequence_offset, as a client resends one whose answer was
    lost: the resend gets the chunk's whole [1,t,O] answer from the stream's record, and the next chunk
    continues from the state after one application of it."""
    tc, url = (thttp, server.url.removeprefix("http://")) if protocol == "http" else (tgrpc, server.grpc_url)
    client = tc.InferenceServerClient(url)
    seq = sequences("forecast", 11)[2]
    want = eager(modules["forecast"], "forecast", seq)
    sid = 4000 + len(protocol)
    for lo, hi in [(0, 6), (6, 13), (13, len(seq))]:
        answers = []
        for _ in range(2):
            inp = tc.InferInput("input", [1, hi - lo, um.FEATURES], "FP32")
            inp.set_data_from_numpy(seq[None, lo:hi])
            answers.append(client.infer("s-forecast", [inp], sequence_id=sid, sequence_start=lo == 0,
                                        sequence_end=hi == len(seq), parameters={"sequence_offset": lo})
                           .as_numpy("output")[0])
        assert answers[0].shape == answers[1].shape == (hi - lo, want.shape[1])
        np.testing.assert_array_equal(answers[0], answers[1])
        np.testing.assert_allclose(answers[0], want[lo:hi], atol=1e-4)


@pytest.mark.parametrize("name, reason", list(REFUSED.items()))
def test_models_that_cannot_stream_refuse_chunks_by_name_and_answer_plain_requests(server, name, reason):
    client = tgrpc.InferenceServerClient(server.grpc_url)
    x = np.random.default_rng(0).standard_normal((1, 5, um.FEATURES)).astype(np.float32)
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match=f"cannot stream.*{reason}"):
        client.infer(f"s-{name}", [inp], sequence_id=5, sequence_start=True)
    assert client.infer(f"s-{name}", [inp]).as_numpy("output").shape[0] == 1
    config = client.get_model_config(f"s-{name}", as_json=True)["config"]
    assert "sequence_batching" not in config
