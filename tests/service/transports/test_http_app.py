"""The HTTP app in process (Starlette's TestClient) against a fake core: routing, codecs, the error
table, and bodies as stock tritonclient encodes and parses them. Every test runs twice: through the
app's own routes, and with the inference fast path (``InferenceFastPath``) in front of it, as the
BentoML service serves it; both must answer alike."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as thttp
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from rnnserve.service.errors import Overloaded, Unavailable
from rnnserve.service.transports.http import STATUS, InferenceFastPath, build_http_app, inference_route
from tests.service.fakes import F, FakeCore, FakeRegistry, cancel_midway, fake_logits

STACKS = {"routed": lambda app: app, "fast_path": lambda app: InferenceFastPath(app, http_app=app)}
_stack = ["routed"]


@pytest.fixture(autouse=True, params=sorted(STACKS))
def stack(request):
    _stack[0] = request.param
    return request.param


def client(core: FakeCore, registry: FakeRegistry | None = None) -> TestClient:
    registry = registry or FakeRegistry(core)
    core.registry = registry  # for assertions on what the transport recorded
    return TestClient(STACKS[_stack[0]](build_http_app(lambda: registry.plane)), raise_server_exceptions=False)


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/predict", ("predict", {})),
    ("POST", "/v2/models/fake/infer", ("infer", {"name": "fake"})),
    ("POST", "/v2/models/fake/versions/7/infer", ("infer", {"name": "fake", "version": "7"})),
    ("GET", "/predict", None),  # the router answers its 405
    ("GET", "/v2/models/fake/infer", None),
    ("POST", "/v2/models//infer", None),
    ("POST", "/v2/models/fake/versions//infer", None),
    ("POST", "/v2/models/fake/x/7/infer", None),
    ("POST", "/v2/models/fake/infer/more", None),
    ("POST", "/predict/", None),
    ("POST", "/v2/repository/models/fake/load", None),
])
def test_the_fast_path_takes_exactly_the_inference_routes(method, path, expected):
    assert inference_route({"type": "http", "method": method, "path": path}) == expected
    if expected is None:
        return
    app = build_http_app(lambda: FakeRegistry(FakeCore()).plane)  # the route the app's own router picks agrees
    matched = [r for r in app.routes if r.matches({"type": "http", "method": method, "path": path})[0].name == "FULL"]
    assert matched and matched[0].endpoint is not None


def test_the_fast_path_does_not_go_down_the_stack_for_inference_but_does_for_the_rest():
    registry = FakeRegistry(FakeCore())
    app = build_http_app(lambda: registry.plane)
    below: list[str] = []

    async def recording(scope, receive, send):
        below.append(scope["path"])
        await app(scope, receive, send)

    c = TestClient(InferenceFastPath(recording, http_app=app))
    assert c.post("/predict", json={"sequences": [[[1.0, 0.0]]]}).status_code == 200
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/predict").status_code == 405
    assert below == ["/v2/health/live", "/predict"]


def test_predict_answers_one_prediction_per_sequence_in_order():
    core = FakeCore()
    seqs = [[[1.0, 0.0]] * 3, [[2.0, 0.0]], [[0.5, 1.0]] * 2]
    r = client(core).post("/predict", json={"sequences": seqs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "fake" and body["version"] == "7" and body["labels"] == ["a", "b", "c"]
    for seq, pred in zip(seqs, body["predictions"], strict=True):
        logits = fake_logits(np.array(seq, np.float32))
        assert pred["label"] == "abc"[int(logits.argmax())]
        np.testing.assert_allclose(pred["scores"], np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    assert core.registry.metrics.ends == [("http_json", "predict", "200")]
    assert core.admission.held == 0


def test_v2_binary_request_from_stock_tritonclient_is_decoded_and_its_response_parsed():
    x = np.zeros((2, 4, F), np.float32)
    x[0, :4, 0], x[1, :2, 0] = 1.0, 3.0
    inputs = [thttp.InferInput("input", list(x.shape), "FP32"), thttp.InferInput("lengths", [2], "INT64")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(np.array([4, 2], np.int64), binary_data=True)
    outputs = [thttp.InferRequestedOutput("output", binary_data=True), thttp.InferRequestedOutput("label")]
    body, header_length = thttp.InferenceServerClient.generate_request_body(inputs, outputs, request_id="r1")
    headers = {"content-type": "application/octet-stream"}
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    r = client(FakeCore()).post("/v2/models/fake/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    result = thttp.InferenceServerClient.parse_response_body(
        r.content, header_length=r.headers.get("inference-header-content-length"))
    np.testing.assert_allclose(result.as_numpy("output"), [[4.0, 4.0, 0.0], [6.0, 2.0, 0.0]])
    assert [v.decode() for v in result.as_numpy("label")] == ["a", "a"]
    assert result.get_response()["id"] == "r1" and result.get_response()["model_version"] == "7"


@pytest.mark.parametrize("method, path, kwargs, status, kind, field", [
    ("post", "/predict", {"json": {"sequences": [[[1.0, 2.0, 3.0]]]}}, 400, "invalid_input", "sequences[0]"),
    ("post", "/predict", {"json": {"sequences": [[]]}}, 422, "unprocessable", "sequences[0]"),
    ("post", "/predict", {"json": {"sequences": [[[1.0, 2.0]]] * 5}}, 413, "too_large", "sequences"),
    ("post", "/predict", {"content": b"x" * 5000, "headers": {"content-type": "application/json"}}, 413,
     "too_large", None),
    ("post", "/predict", {"content": b"a,b", "headers": {"content-type": "text/csv"}}, 415,
     "unsupported_media_type", None),
    ("post", "/predict", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400,
     "invalid_input", None),
    ("post", "/v2/models/other/infer", {"json": {"inputs": []}}, 404, "not_found", "model"),
    ("get", "/v2/models/fake/versions/9", {}, 404, "not_found", "model"),
    ("post", "/v2/models/fake/infer", {"json": {"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 2, F], "data": [1, 2, 3, 4]},
        {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [3]}]}}, 422, "unprocessable", "lengths"),
])
def test_bad_requests_get_the_documented_status_and_error_body(method, path, kwargs, status, kind, field):
    core = FakeCore()
    r = getattr(client(core), method)(path, **kwargs)
    assert r.status_code == status == STATUS[kind], r.text
    body = r.json()
    assert body["kind"] == kind and body.get("field") == field and body["error"]
    assert "Traceback" not in r.text and ".py" not in r.text
    assert not core.seen and core.admission.held == 0


def test_overload_and_not_ready_answer_429_and_503_with_retry_after_before_reading_the_body():
    busy = FakeCore(queue=1)
    held = busy.admission.reserve()  # the one slot is taken
    r = client(busy).post("/predict", json={"sequences": [[[1.0, 2.0]]]})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["kind"] == "overloaded"
    held.release()
    r = client(FakeCore(ready=False)).post("/v2/models/fake/infer", json={"inputs": []})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    r = client(FakeCore(ready=False)).get("/v2/health/ready")
    assert r.status_code == 503


def test_core_errors_map_through_the_table_and_bugs_become_a_bare_500():
    r = client(FakeCore(fail=Overloaded("full"))).post("/predict", json={"sequences": [[[1.0, 2.0]]]})
    assert r.status_code == 429
    core = FakeCore(fail=KeyError("secret internals"))
    r = client(core).post("/predict", json={"sequences": [[[1.0, 2.0]]]})
    assert r.status_code == 500 and r.json() == {"error": "internal error", "kind": "internal"}
    assert core.registry.metrics.errors == [("http_json", "internal")]


def test_metadata_health_openapi_and_drift_routes():
    c = client(FakeCore())
    assert "sequence(string_id)" in c.get("/v2").json()["extensions"]
    assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
    meta = c.get("/v2/models/fake").json()
    assert meta["name"] == "fake" and meta["versions"] == ["7"]
    assert [o["name"] for o in meta["outputs"]] == ["output", "probabilities", "label"]
    assert c.get("/v2/models/fake/versions/7/ready").status_code == 200
    doc = c.get("/openapi.json").json()
    assert "/predict" in doc["paths"] and doc["info"]["title"] == "rnnserve"
    assert {"/v2/models/{name}/generate", "/v2/models/{name}/generate_stream"} <= set(doc["paths"])
    assert c.get("/drift?refresh=1").json() == {"enabled": True, "model": "fake", "version": "7",
                                                 "ready": False, "refreshed": True}
    assert json.loads(c.get("/v2/models/fake").text)["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("sequence_id", [7, "stream-a"])
def test_sequence_parameters_from_stock_tritonclient_reach_the_core_and_are_echoed(sequence_id):
    core = FakeCore()
    c = client(core)
    chunks = [np.full((1, n, F), float(n), np.float32) for n in (3, 1, 2)]
    for i, x in enumerate(chunks):
        inp = thttp.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        body, header_length = thttp.InferenceServerClient.generate_request_body(
            [inp], sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(chunks) - 1)
        headers = {"inference-header-content-length": str(header_length)} if header_length else {}
        r = c.post("/v2/models/fake/infer", content=body, headers={"content-type": "application/octet-stream",
                                                                      **headers})
        assert r.status_code == 200, r.text
        result = thttp.InferenceServerClient.parse_response_body(
            r.content, header_length=r.headers.get("inference-header-content-length"))
        prefix = np.concatenate([ch[0] for ch in chunks[: i + 1]])
        np.testing.assert_allclose(result.as_numpy("output")[0], fake_logits(prefix))
        params = result.get_response()["parameters"]
        assert params["sequence_id"] == sequence_id and params["sequence_end"] == (i == len(chunks) - 1)
    assert core.streams == {}


@pytest.mark.parametrize("parameters, field", [
    ({"sequence_id": 7, "sequence_start": "yes"}, "sequence_start"),
    ({"sequence_id": -1}, "sequence_id"),
    ({"sequence_id": 2**64}, "sequence_id"),
    ({"sequence_id": 1.5}, "sequence_id"),
    ({"sequence_id": True}, "sequence_id"),
    ({"sequence_id": "x" * 300}, "sequence_id"),
    ({"sequence_id": 0, "sequence_start": True}, "sequence_start"),
])
def test_bad_sequence_parameters_are_400_naming_the_parameter(parameters, field):
    payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, F], "data": [1.0, 2.0]}],
               "parameters": parameters}
    core = FakeCore()
    r = client(core).post("/v2/models/fake/infer", json=payload)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and not core.seen


def test_a_stream_chunk_must_be_a_batch_of_one():
    payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, F], "data": [1.0] * 4}],
               "parameters": {"sequence_id": 3, "sequence_start": True}}
    r = client(FakeCore()).post("/v2/models/fake/infer", json=payload)
    assert r.status_code == 400 and "batch of 2" in r.json()["error"]


def test_json_api_streams_one_chunk_per_request():
    core = FakeCore()
    c = client(core)
    r1 = c.post("/predict", json={"sequences": [[[1.0, 0.0]] * 2], "stream": {"id": "s", "start": True}})
    r2 = c.post("/predict", json={"sequences": [[[3.0, 0.0]]], "stream": {"id": "s", "end": True}})
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    assert r2.json()["stream"] == {"id": "s", "start": False, "end": True, "steps": 3}
    bad = c.post("/predict", json={"sequences": [[[1.0, 0.0]]] * 2, "stream": {"id": "s", "start": True}})
    assert bad.status_code == 400 and bad.json()["field"] == "sequences"
    bad = c.post("/predict", json={"sequences": [[[1.0, 0.0]]], "stream": {"id": 0}})
    assert bad.status_code == 400 and bad.json()["field"] == "stream.id"
    bad = c.post("/predict", json={"sequences": [[[1.0, 0.0]]], "stream": {"id": 1, "start": 1}})
    assert bad.status_code == 400 and bad.json()["field"] == "stream.start"


def test_model_config_is_what_tritonclient_reads():
    r = client(FakeCore()).get("/v2/models/fake/config")
    config = r.json()
    assert config["max_batch_size"] == 4 and config["platform"] == "onnxruntime_onnx"
    assert config["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": [-1, F]}
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 60_000_000
    assert [o["name"] for o in config["output"]] == ["output", "probabilities", "label"]


def test_repository_api_and_statistics_routes_as_tritonclient_calls_them():
    core = FakeCore()
    registry = FakeRegistry(core)
    c = client(core, registry)
    r = c.post("/v2/repository/index", content=b"")
    assert r.status_code == 200 and r.json() == [{"name": "fake", "version": "7", "state": "READY"}]
    assert c.post("/v2/repository/models/fake/load", content=b"{}").status_code == 200
    r = c.post("/v2/repository/models/fake/unload", json={"parameters": {"unload_dependents": False}})
    assert r.status_code == 200
    r = c.post("/v2/repository/models/other/load", json={"parameters": {"version": "9"}})
    assert r.status_code == 404 and "not in the store" in r.json()["error"]
    r = c.post("/v2/repository/models/fake/load", json={"parameters": {"config": "{}"}})
    assert r.status_code == 400 and r.json()["field"] == "config"
    assert registry.loads == [("load", "fake", None), ("unload", "fake", None), ("load", "other", "9")]
    c.post("/predict", json={"sequences": [[[1.0, 2.0]]]})
    stats = c.get("/v2/models/fake/stats").json()["model_stats"][0]
    assert stats["name"] == "fake" and stats["inference_stats"]["success"]["count"] == 1
    every = c.get("/v2/models/stats")  # every model's (tritonclient's get_inference_statistics() without a name)
    assert every.status_code == 200 and every.json()["model_stats"][0]["name"] == "fake"
    off = client(FakeCore(), FakeRegistry(FakeCore(), repository_api=False))
    r = off.post("/v2/repository/index", content=b"")
    assert r.status_code == 403 and "switched off" in r.json()["error"]


def test_an_unknown_route_answers_json_that_tritonclient_parses():
    r = client(FakeCore()).get("/v2/no/such/route")
    assert r.status_code == 404 and r.json()["error"].startswith("no route GET /v2/no/such/route")
    r = client(FakeCore()).delete("/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_a_request_cancelled_by_the_timeout_leaves_in_flight_and_is_counted():
    """BentoML's request timeout cancels the request's task (and answers 504 itself): the transport
    must still end its in-flight count and record the failure, and the core's work is cancelled."""
    core = FakeCore(delay=30)
    registry = FakeRegistry(core)
    http_app = build_http_app(lambda: registry.plane)
    app = STACKS[_stack[0]](http_app)
    body = json.dumps({"sequences": [[[1.0, 2.0]]]}).encode()
    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else await asyncio.sleep(3600)

    async def send(message):
        raise AssertionError(f"a cancelled request answered: {message}")

    cancel_midway(lambda: app(scope, receive, send))
    assert core.cancelled == 1 and core.seen == []
    assert registry.metrics.ends == [("http_json", "predict", "504")]
    assert registry.metrics.errors == [("http_json", "timeout")]
    assert core.stats.to_dict()["inference_stats"]["fail"]["count"] == 1


# ---- restricted API categories -------------------------------------------------------------------------

EVERY_CATEGORY = ("health,metadata,inference,model-config,model-repository,statistics,metrics:x-key=k1;"
                  "shared-memory,trace,logging:x-other=k2")
HTTP_CALLS = [("POST", "/predict", {"sequences": [[[1.0, 0.0]]]}), ("GET", "/openapi.json", None),
              ("GET", "/drift", None), ("GET", "/v2", None), ("GET", "/v2/health/live", None),
              ("GET", "/v2/health/ready", None), ("GET", "/v2/models/fake", None),
              ("GET", "/v2/models/fake/versions/7/ready", None), ("GET", "/v2/models/fake/config", None),
              ("GET", "/v2/models/fake/stats", None), ("GET", "/v2/models/stats", None),
              ("POST", "/v2/repository/index", {}), ("POST", "/v2/repository/models/fake/load", {}),
              ("POST", "/v2/repository/models/fake/unload", {}),
              ("POST", "/v2/models/fake/infer", {"inputs": [{"name": "input", "datatype": "FP32",
                                                             "shape": [1, 1, 2], "data": [1.0, 0.0]}]}),
              ("POST", "/v2/models/fake/generate", {"text_input": "ab"}),
              ("POST", "/v2/models/fake/generate_stream", {"text_input": "ab"})]


def test_every_route_is_refused_when_its_category_is_restricted_and_answered_with_the_key():
    from rnnserve.service.transports.http import ROUTES

    assert len(ROUTES) == len(HTTP_CALLS)  # one call per route
    core = FakeCore()
    c = client(core, FakeRegistry(core, restricted_api=EVERY_CATEGORY))
    for method, path, body in HTTP_CALLS:
        for headers in [{}, {"x-key": "k2"}, {"x-other": "k2"}, {"X-KEY": "k1 "}]:
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 403, (path, headers, r.status_code, r.text)
            assert r.json()["kind"] == "forbidden" and "'x-key'" in r.json()["error"] and "k1" not in r.text
        for headers in [{"x-key": "k1"}, {"X-Key": "k1"}, {"triton-grpc-protocol-x-key": "k1"}]:
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 200, (path, headers, r.status_code, r.text)
    assert ("http_json", "forbidden") in core.registry.metrics.errors


def test_bentomls_own_routes_follow_the_restrictions():
    from rnnserve.service.security import Restrictions
    from rnnserve.service.transports.http import SYSTEM_ROUTES, RestrictedSystemRoutes

    below: list[str] = []

    async def bentoml(scope, receive, send):
        below.append(scope["path"])
        await JSONResponse({})(scope, receive, send)

    restrictions = Restrictions.parse("health:x-probe=p;metrics:authorization=Bearer t;metadata:x-m=m")
    c = TestClient(RestrictedSystemRoutes(bentoml, restrictions))
    for path in SYSTEM_ROUTES:
        r = c.get(path)
        assert r.status_code == 403 and r.json()["kind"] == "forbidden", path
    assert c.get("/livez", headers={"x-probe": "p"}).status_code == 200
    assert c.get("/readyz", headers={"x-probe": "p"}).status_code == 200
    assert c.get("/metrics", headers={"Authorization": "Bearer t"}).status_code == 200  # what Prometheus sends
    assert c.get("/schema.json", headers={"x-m": "m"}).status_code == 200
    assert c.get("/static_content/index.css").status_code == 200  # not a restricted route
    assert below == ["/livez", "/readyz", "/metrics", "/schema.json", "/static_content/index.css"]


# ---- generation (Triton's generate extension) ----------------------------------------------------------

def test_generate_answers_one_json_and_generate_stream_server_sent_events():
    core = FakeCore()
    c = client(core)
    r = c.post("/v2/models/fake/generate", json={"text_input": "abc", "parameters": {"max_tokens": 5}})
    assert r.json() == {"model_name": "fake", "model_version": "7", "text_output": "cba", "finish_reason": "length"}
    r = c.post("/v2/models/fake/versions/7/generate_stream", json={"text_input": "abc"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in r.text.split("\n\n") if line]
    assert [e["text_output"] for e in events] == ["c", "b", "a"] and events[-1]["finish_reason"] == "length"
    assert "finish_reason" not in events[0]
    assert [e for e in core.registry.metrics.ends if e[1].startswith("generate")] == [
        ("http_v2", "generate", "200"), ("http_v2", "generate_stream", "200")]


def test_generation_errors_before_the_first_piece_are_ordinary_answers_and_release_the_slot():
    core = FakeCore(queue=1)
    c = client(core)
    for path in ("generate", "generate_stream"):
        r = c.post(f"/v2/models/fake/{path}", json={"text_input": "ab", "parameters": {"top_k": -2}})
        assert r.status_code == 400 and r.json()["field"] == "top_k"
        r = c.post(f"/v2/models/fake/{path}", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert core.admission.held == 0
    core.fail = Unavailable("model is not ready yet")
    assert c.post("/v2/models/fake/generate_stream", json={"text_input": "ab"}).status_code == 503
    assert core.admission.held == 0
