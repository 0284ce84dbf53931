"""End to end against the real server (BentoML subprocess on free loopback ports)."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rnnserve.bundle.batch import pad
from rnnserve.harness.promtext import total

pytestmark = pytest.mark.e2e
F = 4  # the tiny bundle's features


def random_seqs(n, seed, max_len=300):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, max_len + 1)), F)).astype(np.float32) for _ in range(n)]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_predict_json_matches_in_process_onnxruntime(server, reference, tiny_bundle):
    seqs = random_seqs(12, 0)
    r = httpx.post(server.url + "/predict", json={"sequences": [s.tolist() for s in seqs]}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["version"] == tiny_bundle.version
    assert len(body["predictions"]) == 12
    for seq, pred in zip(seqs, body["predictions"], strict=True):
        expected = softmax(reference(seq))
        np.testing.assert_allclose(pred["scores"], expected, atol=1e-5)
        assert pred["label"] == body["labels"][int(np.argmax(expected))]


def test_v2_http_json_without_binary_extension(server, reference):
    seqs = random_seqs(3, 1)
    x, lengths = pad(seqs)
    payload = {"id": "req-7", "inputs": [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()},
        {"name": "lengths", "datatype": "INT64", "shape": [3], "data": lengths.tolist()},
    ], "outputs": [{"name": "output"}]}
    r = httpx.post(server.url + "/v2/models/tiny/infer", json=payload, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and out["outputs"][0]["shape"] == [3, 3]
    got = np.array(out["outputs"][0]["data"]).reshape(3, 3)
    for row, seq in zip(got, seqs, strict=True):
        np.testing.assert_allclose(row, reference(seq), atol=1e-5)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_stock_tritonclient_works_unmodified(server, reference, tiny_bundle, kind):
    mod, url = (thttp, server.url.removeprefix("http://")) if kind == "http" else (tgrpc, server.grpc_url)
    client = mod.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", tiny_bundle.version)
    meta = client.get_model_metadata("tiny", as_json=True) if kind == "grpc" else client.get_model_metadata("tiny")
    assert [i["name"] for i in meta["inputs"]] == ["input", "lengths"]
    assert [str(d) for d in meta["inputs"][0]["shape"]] == ["-1", "-1", "4"]

    one = random_seqs(1, 2)[0]
    inp = mod.InferInput("input", [1, len(one), F], "FP32")
    inp.set_data_from_numpy(one[None])
    result = client.infer("tiny", [inp])
    np.testing.assert_allclose(result.as_numpy("output")[0], reference(one), atol=1e-5)
    assert result.as_numpy("label")[0].decode().startswith("class_")

    seqs = random_seqs(5, 3)
    x, lengths = pad(seqs)
    inputs = [mod.InferInput("input", list(x.shape), "FP32"), mod.InferInput("lengths", [5], "INT32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(lengths.astype(np.int32))
    outputs = [mod.InferRequestedOutput("probabilities"), mod.InferRequestedOutput("output")]
    result = client.infer("tiny", inputs, outputs=outputs)
    for row, seq in zip(result.as_numpy("output"), seqs, strict=True):
        np.testing.assert_allclose(row, reference(seq), atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="not served here"):
        client.infer("other-model", [inp])


def _batch_observations(metrics_text: str) -> tuple[float, float]:
    """Adaptive batches so far, and those of one sequence."""
    return (total(metrics_text, "rnnserve_batch_sequences_count"),
            total(metrics_text, "rnnserve_batch_sequences_bucket", le="1.0"))


def test_200_concurrent_requests_over_all_transports_are_answered_correctly_and_batched(server, reference):
    rng = np.random.default_rng(4)
    seqs = [rng.standard_normal((int(rng.integers(1, 2001)), F)).astype(np.float32) for _ in range(200)]
    before = _batch_observations(httpx.get(server.url + "/metrics").text)

    async def json_call(client, s):
        r = await client.post("/predict", json={"sequences": [s.tolist()]})
        assert r.status_code == 200, r.text
        return np.log(np.array(r.json()["predictions"][0]["scores"]))

    async def v2_call(client, s):
        payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *s.shape],
                               "data": s.reshape(-1).tolist()}], "outputs": [{"name": "output"}]}
        r = await client.post("/v2/models/tiny/infer", json=payload)
        assert r.status_code == 200, r.text
        return np.array(r.json()["outputs"][0]["data"])

    async def grpc_call(client, s):
        inp = tgrpc_aio.InferInput("input", [1, *s.shape], "FP32")
        inp.set_data_from_numpy(s[None])
        result = await client.infer("tiny", [inp], outputs=[tgrpc_aio.InferRequestedOutput("output")])
        return result.as_numpy("output")[0]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as http:
            grpc_client = tgrpc_aio.InferenceServerClient(server.grpc_url)
            calls = [(json_call, http), (v2_call, http), (grpc_call, grpc_client)]
            tasks = [calls[i % 3][0](calls[i % 3][1], s) for i, s in enumerate(seqs)]
            out = await asyncio.gather(*tasks)
            await grpc_client.close()
            return out

    results = asyncio.run(main())
    for i, (s, got) in enumerate(zip(seqs, results, strict=True)):
        expected = reference(s)
        if i % 3 == 0:  # JSON carries probabilities: compare log-softmax
            expected = np.log(softmax(expected))
        np.testing.assert_allclose(got, expected, atol=1e-4 if i % 3 == 0 else 1e-5)
    after = _batch_observations(httpx.get(server.url + "/metrics").text)
    batches, single = after[0] - before[0], after[1] - before[1]
    assert batches < 200 and single < batches, "no batch with more than one sequence was observed"


@pytest.mark.parametrize("kwargs, status, field", [
    ({"json": {"sequences": [[[1.0, 2.0]]]}}, 400, "sequences[0]"),
    ({"json": {"sequences": [[]]}}, 422, "sequences[0]"),
    ({"content": b'{"sequences": [[[1, 2, 3, NaN]]]}', "headers": {"content-type": "application/json"}}, 422,
     "sequences[0]"),
    ({"json": {"sequences": [[[0.0] * F] * 2001]}}, 422, "sequences[0]"),
    ({"json": {"sequences": [[[0.0] * F]] * 257}}, 413, "sequences"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
    ({"content": b"a,b", "headers": {"content-type": "text/csv"}}, 415, None),
])
def test_bad_input_gets_documented_status_and_server_stays_healthy(server, kwargs, status, field):
    r = httpx.post(server.url + "/predict", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and body.get("field") == field
    assert "Traceback" not in r.text and "/work/" not in r.text
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_grpc_errors_use_documented_codes(server):
    client = tgrpc.InferenceServerClient(server.grpc_url)
    bad = tgrpc.InferInput("input", [1, 2, F + 1], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 2, F + 1), np.float32))
    with pytest.raises(Exception) as info:
        client.infer("tiny", [bad])
    assert "INVALID_ARGUMENT" in str(info.value) and "input" in str(info.value)
    nan = tgrpc.InferInput("input", [1, 2, F], "FP32")
    nan.set_data_from_numpy(np.full((1, 2, F), np.nan, np.float32))
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        client.infer("tiny", [nan])


def test_probes_health_and_metrics(server, tiny_bundle):
    assert httpx.get(server.url + "/livez").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert "binary_tensor_data" in httpx.get(server.url + "/v2").json()["extensions"]
    with grpc.insecure_channel(server.grpc_url) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.post(server.url + "/predict", json={"sequences": [[[0.0] * F]]}).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    info = f'model="tiny",provider="CPUExecutionProvider",version="{tiny_bundle.version}"'
    assert f"rnnserve_model_info{{{info}}} 1.0" in text
    assert 'rnnserve_request_duration_seconds_count{endpoint="predict"' in text


def test_launcher_stops_a_server_that_never_becomes_ready(tmp_path):
    import os

    from rnnserve.harness.launch import ServerProcess

    server = ServerProcess("no-such-model", env={**os.environ, "BENTOML_HOME": str(tmp_path)})
    server.wait_ready = lambda timeout=120.0: (_ for _ in ()).throw(TimeoutError("not ready"))
    with pytest.raises(TimeoutError):
        with server:
            pass
    assert server.proc.poll() is not None  # stopped, not leaked


def test_a_second_server_on_the_same_bentoml_home_leaves_the_first_ones_metrics_live(server, bentoml_home):
    """BentoML empties its shared Prometheus directory when a server starts; each of ours has its own."""
    from rnnserve.harness.launch import ServerProcess
    from rnnserve.service.entry import metrics_dir

    seq = {"sequences": [[[0.1, 0.2, 0.3, 0.4]] * 5]}
    def batches(srv):
        return _batch_observations(httpx.get(srv.url + "/metrics").text)[0]

    for _ in range(3):  # so that the two servers' counts differ
        assert httpx.post(server.url + "/predict", json=seq, timeout=30).status_code == 200
    first_before = batches(server)
    with ServerProcess("tiny") as second:
        second_before = batches(second)  # its warm-up batches
        assert httpx.post(second.url + "/predict", json=seq, timeout=30).status_code == 200
        assert httpx.post(server.url + "/predict", json=seq, timeout=30).status_code == 200
        assert batches(server) == first_before + 1 and batches(second) == second_before + 1
        dirs = {metrics_dir(str(bentoml_home), "127.0.0.1", str(s.http_port)) for s in (server, second)}
        assert len(dirs) == 2 and all(any(d.iterdir()) for d in dirs)
