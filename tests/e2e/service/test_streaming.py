"""Stateful streams against the real server with stock tritonclient (HTTP and gRPC, integer and
string ids): every chunk's answer equals a plain request on that prefix; Triton's lifecycle and the
stream bounds; the model configuration endpoint; the bidirectional gRPC stream."""

from __future__ import annotations

import asyncio
import queue
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio

from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import total

pytestmark = pytest.mark.e2e
F = 4  # the tiny bundle's features


def chunks_of(seq: np.ndarray, rng) -> list[np.ndarray]:
    """Random chunk sizes from 1 step up to the rest of the sequence, 1-step chunks included."""
    out, at = [], 0
    while at < len(seq):
        n = int(rng.choice([1, 1, 2, 3, int(rng.integers(1, 40))]))
        out.append(seq[at : at + n])
        at += n
    return out


async def send_http(client, sid, chunk, start, end):
    inp = thttp_aio.InferInput("input", [1, *chunk.shape], "FP32")
    inp.set_data_from_numpy(chunk[None])
    result = await client.infer("tiny", [inp], sequence_id=sid, sequence_start=start, sequence_end=end)
    assert result.get_response()["parameters"]["sequence_id"] == sid
    return result.as_numpy("output")[0]


async def send_grpc(client, sid, chunk, start, end):
    inp = tgrpc_aio.InferInput("input", [1, *chunk.shape], "FP32")
    inp.set_data_from_numpy(chunk[None])
    result = await client.infer("tiny", [inp], sequence_id=sid, sequence_start=start, sequence_end=end)
    return result.as_numpy("output")[0]


def test_many_concurrent_streams_over_both_transports_match_a_plain_request_on_every_prefix(server, reference):
    rng = np.random.default_rng(11)
    streams = {}
    for i in range(16):
        sid = 1000 + i if i % 2 else f"sensor-{i}"
        seq = rng.standard_normal((int(rng.integers(1, 160)), F)).astype(np.float32)
        streams[sid] = (seq, chunks_of(seq, rng))

    async def one(sid, seq, chunks, http, grpc_client):
        answers = []
        for k, chunk in enumerate(chunks):
            send = send_http if (k + hash(str(sid))) % 2 else send_grpc  # transports interleaved within a stream
            answers.append(await send(http if send is send_http else grpc_client, sid, chunk, k == 0,
                                      k == len(chunks) - 1))
        return answers

    async def main():
        http = thttp_aio.InferenceServerClient(server.url.removeprefix("http://"))
        grpc_client = tgrpc_aio.InferenceServerClient(server.grpc_url)
        try:
            return await asyncio.gather(*(one(sid, seq, ch, http, grpc_client) for sid, (seq, ch) in streams.items()))
        finally:
            await http.close()
            await grpc_client.close()

    results = asyncio.run(main())
    checked = 0
    for (seq, chunks), answers in zip(streams.values(), results, strict=True):
        end = 0
        for chunk, got in zip(chunks, answers, strict=True):
            end += len(chunk)
            np.testing.assert_allclose(got, reference(seq[:end]), atol=1e-5)
            checked += 1
    assert checked > 100
    text = httpx.get(server.url + "/metrics").text
    assert total(text, "rnnserve_streams_active") == 0  # every stream ended and was freed
    assert total(text, "rnnserve_stream_events_total", event="ended") >= len(streams)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_lifecycle_needs_start_end_frees_start_restarts(server, reference, kind):
    mod, url = (thttp, server.url.removeprefix("http://")) if kind == "http" else (tgrpc, server.grpc_url)
    client = mod.InferenceServerClient(url)
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal((n, F)).astype(np.float32) for n in (6, 4))

    def chunk(x, **kw):
        inp = mod.InferInput("input", [1, *x.shape], "FP32")
        inp.set_data_from_numpy(x[None])
        return client.infer("tiny", [inp], **kw).as_numpy("output")[0]

    sid = 424242 if kind == "http" else "lifecycle"
    with pytest.raises(Exception, match="must specify the START flag") as info:
        chunk(a, sequence_id=sid)  # never started
    assert str(sid) in str(info.value)
    assert ("400" in str(info.value)) if kind == "http" else ("INVALID_ARGUMENT" in str(info.value))
    np.testing.assert_allclose(chunk(a, sequence_id=sid, sequence_start=True), reference(a), atol=1e-5)
    np.testing.assert_allclose(chunk(b, sequence_id=sid, sequence_start=True), reference(b), atol=1e-5)  # restart
    np.testing.assert_allclose(chunk(a, sequence_id=sid, sequence_end=True), reference(np.concatenate([b, a])),
                               atol=1e-5)
    with pytest.raises(Exception, match="must specify the START flag"):
        chunk(a, sequence_id=sid)  # ended: freed
    np.testing.assert_allclose(chunk(a), reference(a), atol=1e-5)  # id 0: stateless, as before


def test_model_config_and_metadata_for_triton_clients(server):
    http = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    config = http.get_model_config("tiny")
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] > 0
    assert config["input"][0]["dims"] == [-1, F] and config["max_batch_size"] >= 1
    grpc_config = tgrpc.InferenceServerClient(server.grpc_url).get_model_config("tiny").config
    assert grpc_config.sequence_batching.max_sequence_idle_microseconds > 0
    assert "sequence" in http.get_server_metadata()["extensions"]


def test_bidirectional_grpc_stream_from_stock_tritonclient(server, reference):
    client = tgrpc.InferenceServerClient(server.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    rng = np.random.default_rng(8)
    seq = rng.standard_normal((40, F)).astype(np.float32)
    chunks = chunks_of(seq, rng)
    try:
        for k, c in enumerate(chunks):
            inp = tgrpc.InferInput("input", [1, *c.shape], "FP32")
            inp.set_data_from_numpy(c[None])
            client.async_stream_infer("tiny", [inp], request_id=str(k), sequence_id=77, sequence_start=k == 0,
                                      sequence_end=k == len(chunks) - 1)
        got = [answers.get(timeout=30) for _ in chunks]
    finally:
        client.stop_stream()
    assert all(error is None for _, error in got), [e for _, e in got if e]
    by_id = {int(r.get_response().id): r.as_numpy("output")[0] for r, _ in got}
    end = 0
    for k, c in enumerate(chunks):
        end += len(c)
        np.testing.assert_allclose(by_id[k], reference(seq[:end]), atol=1e-5)


@pytest.fixture(scope="module")
def bounded(tiny_bundle):
    settings = {"RNNSERVE_STREAMS__MAX_STREAMS": "2", "RNNSERVE_STREAMS__IDLE_TIMEOUT_S": "1",
                "RNNSERVE_STREAMS__MAX_STREAM_STEPS": "10"}
    with ServerProcess("tiny", settings) as srv:
        yield srv


def test_stream_limit_idle_expiry_and_stream_length_bound(bounded):
    http = thttp.InferenceServerClient(bounded.url.removeprefix("http://"))
    grpc_client = tgrpc.InferenceServerClient(bounded.grpc_url)
    x = np.ones((1, 3, F), np.float32)

    def send(client, mod, sid, steps=3, **kw):
        inp = mod.InferInput("input", [1, steps, F], "FP32")
        inp.set_data_from_numpy(x[:, :steps])
        return client.infer("tiny", [inp], sequence_id=sid, **kw)

    send(http, thttp, 1, sequence_start=True)
    send(http, thttp, 2, sequence_start=True)
    with pytest.raises(Exception, match="429|limit is 2"):
        send(http, thttp, 3, sequence_start=True)
    with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
        send(grpc_client, tgrpc, 3, sequence_start=True)
    send(http, thttp, 1)  # live streams are still served: 6 steps
    send(http, thttp, 1)  # 9 steps
    with pytest.raises(Exception, match="422.*limit is 10"):
        send(http, thttp, 1)  # 12 > 10: refused
    send(http, thttp, 1, steps=1, sequence_end=True)  # the refused chunk left the state at 9 steps: 10
    time.sleep(2.6)  # stream 2 is idle past 1 s: evicted by the sweeper
    with pytest.raises(Exception, match="must specify the START flag"):
        send(http, thttp, 2)
    text = httpx.get(bounded.url + "/metrics").text
    assert total(text, "rnnserve_stream_events_total", event="expired") >= 1
    assert total(text, "rnnserve_stream_events_total", event="refused") == 2
    assert total(text, "rnnserve_streams_limit") == 2
    send(http, thttp, 3, sequence_start=True, sequence_end=True)  # room again


def test_a_stream_to_a_model_that_cannot_stream_is_refused(bidirectional):
    with ServerProcess(bidirectional) as srv:
        client = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
        inp = thttp.InferInput("input", [1, 3, F], "FP32")
        inp.set_data_from_numpy(np.ones((1, 3, F), np.float32))
        with pytest.raises(Exception, match="cannot stream"):
            client.infer(bidirectional, [inp], sequence_id=5, sequence_start=True)
        assert client.infer(bidirectional, [inp]).as_numpy("output").shape == (1, 3)  # plain requests work
        assert "sequence_batching" not in client.get_model_config(bidirectional)


@pytest.fixture(scope="module")
def step_engine(tiny_bundle):
    with ServerProcess("tiny", {"RNNSERVE_BATCHING__POLICY": "steps", "RNNSERVE_BATCHING__MAX_STEPS": "8"}) as srv:
        yield srv


def test_the_step_engine_gives_the_same_answers_to_streams_and_plain_requests(step_engine, reference):
    """Continuous step-level batching: long plain sequences span many 8-step iterations while stream
    chunks and short sequences join and leave between them."""
    rng = np.random.default_rng(21)
    plain = [rng.standard_normal((int(rng.integers(1, 300)), F)).astype(np.float32) for _ in range(24)]
    seq = rng.standard_normal((90, F)).astype(np.float32)
    chunks = chunks_of(seq, rng)

    async def main():
        grpc_client = tgrpc_aio.InferenceServerClient(step_engine.grpc_url)
        try:
            async def one(s):
                inp = tgrpc_aio.InferInput("input", [1, *s.shape], "FP32")
                inp.set_data_from_numpy(s[None])
                return (await grpc_client.infer("tiny", [inp])).as_numpy("output")[0]

            async def stream():
                return [await send_grpc(grpc_client, "engine", c, k == 0, k == len(chunks) - 1)
                        for k, c in enumerate(chunks)]

            return await asyncio.gather(stream(), *(one(s) for s in plain))
        finally:
            await grpc_client.close()

    streamed, *answers = asyncio.run(main())
    for s, got in zip(plain, answers, strict=True):
        np.testing.assert_allclose(got, reference(s), atol=1e-5)
    end = 0
    for c, got in zip(chunks, streamed, strict=True):
        end += len(c)
        np.testing.assert_allclose(got, reference(seq[:end]), atol=1e-5)
    text = httpx.get(step_engine.url + "/metrics").text
    assert total(text, "rnnserve_iteration_steps_count") > 0
    assert total(text, "rnnserve_model_cpu_seconds_total") > 0  # the step engine's model runs are counted too
