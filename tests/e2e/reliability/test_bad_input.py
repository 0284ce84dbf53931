"""The bad-input matrix over all three transports: documented code, a message naming the field,
and a healthy server afterwards."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
F = 4
OK_SEQ = [[0.1] * F] * 3


def seq(n):
    return [[0.1] * F] * n


JSON_CASES = [
    ("not json", b"{sequences:", "application/json", 400, None),
    ("non-utf8", b'{"sequences": "\xff"}', "application/json", 400, None),
    ("top-level list", json.dumps([OK_SEQ]).encode(), "application/json", 400, None),
    ("missing field", b"{}", "application/json", 400, "sequences"),
    ("unknown field", json.dumps({"sequences": [OK_SEQ], "x": 1}).encode(), "application/json", 400, "x"),
    ("sequences not a list", b'{"sequences": 3}', "application/json", 400, "sequences"),
    ("string value", json.dumps({"sequences": [[["a"] * F]]}).encode(), "application/json", 400, "sequences[0]"),
    ("null value", json.dumps({"sequences": [[[None] * F]]}).encode(), "application/json", 400, "sequences[0]"),
    ("ragged timesteps", json.dumps({"sequences": [[[0.1] * F, [0.1]]]}).encode(), "application/json", 400,
     "sequences[0]"),
    ("flat sequence", json.dumps({"sequences": [[0.1] * F]}).encode(), "application/json", 400, "sequences[0]"),
    ("wrong feature count", json.dumps({"sequences": [OK_SEQ, [[0.1] * (F + 1)]]}).encode(), "application/json",
     400, "sequences[1]"),
    ("empty request", b'{"sequences": []}', "application/json", 400, "sequences"),
    ("empty sequence", b'{"sequences": [[]]}', "application/json", 422, "sequences[0]"),
    ("NaN", b'{"sequences": [[[0.1, 0.2, NaN, 0.4]]]}', "application/json", 422, "sequences[0]"),
    ("-Infinity", b'{"sequences": [[[0.1, 0.2, -Infinity, 0.4]]]}', "application/json", 422, "sequences[0]"),
    ("over max length", json.dumps({"sequences": [seq(101)]}).encode(), "application/json", 422, "sequences[0]"),
    ("over batch limit", json.dumps({"sequences": [OK_SEQ] * 9}).encode(), "application/json", 413, "sequences"),
    ("over body limit", json.dumps({"sequences": [seq(100)] * 8, "pad": "x" * 300_000}).encode(),
     "application/json", 413, None),
    ("wrong content type", json.dumps({"sequences": [OK_SEQ]}).encode(), "text/plain", 415, None),
]


@pytest.mark.parametrize("name, body, ctype, status, field", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_http_json_matrix(limited, name, body, ctype, status, field):
    r = httpx.post(limited.url + "/predict", content=body, headers={"content-type": ctype}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["kind"] and err["error"] and err.get("field") == field
    if field:
        assert field.split("[")[0] in err["error"]
    assert "Traceback" not in r.text and "/work" not in r.text and ".py" not in r.text


def v2(inputs, **extra):
    return {"inputs": inputs, **extra}


X = {"name": "input", "datatype": "FP32", "shape": [2, 3, F], "data": [0.1] * (2 * 3 * F)}
V2_CASES = [
    ("missing inputs", "/v2/models/tiny/infer", {"id": "1"}, 400, "inputs"),
    ("unknown input", "/v2/models/tiny/infer", v2([{**X, "name": "x"}]), 400, "x"),
    ("wrong datatype", "/v2/models/tiny/infer", v2([{**X, "datatype": "FP16"}]), 400, "input"),
    ("BYTES input", "/v2/models/tiny/infer", v2([{**X, "datatype": "BYTES", "data": ["a"] * 24}]), 400, "inputs[0]"),
    ("shape/data mismatch", "/v2/models/tiny/infer", v2([{**X, "shape": [2, 4, F]}]), 400, "inputs[0]"),
    ("wrong feature axis", "/v2/models/tiny/infer", v2([{**X, "shape": [2, 4, 3]}]), 400, "input"),
    ("rank 2 input", "/v2/models/tiny/infer", v2([{**X, "shape": [6, F]}]), 400, "input"),
    ("lengths count mismatch", "/v2/models/tiny/infer",
     v2([X, {"name": "lengths", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]}]), 400, "lengths"),
    ("length zero", "/v2/models/tiny/infer",
     v2([X, {"name": "lengths", "datatype": "INT32", "shape": [2], "data": [0, 3]}]), 422, "lengths"),
    ("length beyond T", "/v2/models/tiny/infer",
     v2([X, {"name": "lengths", "datatype": "INT32", "shape": [2], "data": [4, 3]}]), 422, "lengths"),
    ("parameters not an object", "/v2/models/tiny/infer", v2([{**X, "parameters": [None]}]), 400, "inputs[0]"),
    ("int overflow", "/v2/models/tiny/infer",
     v2([X, {"name": "lengths", "datatype": "INT32", "shape": [2], "data": [2**40, 1]}]), 400, "inputs[1]"),
    ("huge shape", "/v2/models/tiny/infer", v2([{**X, "shape": [2**62, 2**62, F]}]), 400, "inputs[0]"),
    ("float lengths", "/v2/models/tiny/infer",
     v2([X, {"name": "lengths", "datatype": "FP32", "shape": [2], "data": [1, 3]}]), 400, "lengths"),
    ("unknown output", "/v2/models/tiny/infer", v2([X], outputs=[{"name": "logits"}]), 400, "logits"),
    ("over max length", "/v2/models/tiny/infer",
     v2([{**X, "shape": [1, 101, F], "data": [0.1] * (101 * F)}]), 422, "input[0]"),
    ("over batch limit", "/v2/models/tiny/infer",
     v2([{**X, "shape": [9, 1, F], "data": [0.1] * (9 * F)}]), 413, "input"),
    ("unknown model", "/v2/models/nope/infer", v2([X]), 404, "model"),
    ("unknown version", "/v2/models/tiny/versions/999/infer", v2([X]), 404, "model"),
]


@pytest.mark.parametrize("name, path, payload, status, field", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_http_v2_matrix(limited, name, path, payload, status, field):
    r = httpx.post(limited.url + path, json=payload, timeout=30)
    assert r.status_code == status, r.text
    assert r.json().get("field") == field and r.json()["error"]


def test_http_v2_binary_framing_errors(limited):
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, F],
                                     "parameters": {"binary_data_size": 1000}}]}).encode()
    for length, body in [("x", header), (str(len(header) + 99), header), (str(len(header)), header + b"\0" * 8)]:
        r = httpx.post(limited.url + "/v2/models/tiny/infer", content=body, timeout=30,
                       headers={"content-type": "application/octet-stream", "inference-header-content-length": length})
        assert r.status_code == 400, r.text


def grpc_request(shape=(1, 3, F), datatype="FP32", model="tiny", version="", lengths=None, values=None, raw=True):
    x = np.full(shape, 0.1, np.float32) if values is None else values
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=list(shape)))
    if raw:
        req.raw_input_contents.append(x.tobytes())
    if lengths is not None:
        req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="lengths", datatype="INT64",
                                                                shape=[len(lengths)]))
        req.raw_input_contents.append(np.array(lengths, np.int64).tobytes())
    return req


GRPC_CASES = [
    ("wrong datatype", grpc_request(datatype="FP64", values=np.full((1, 3, F), 0.1)),
     grpc.StatusCode.INVALID_ARGUMENT, "FP32"),
    ("datatype/bytes mismatch", grpc_request(datatype="FP64"), grpc.StatusCode.INVALID_ARGUMENT, "needs 12"),
    ("wrong feature axis", grpc_request(shape=(1, 4, 3)), grpc.StatusCode.INVALID_ARGUMENT, "input"),
    ("byte count mismatch", grpc_request(shape=(1, 5, F), values=np.zeros((1, 3, F), np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT, "needs"),
    ("lengths mismatch", grpc_request(shape=(2, 3, F), lengths=[1, 2, 3]), grpc.StatusCode.INVALID_ARGUMENT,
     "lengths"),
    ("length zero", grpc_request(shape=(2, 3, F), lengths=[0, 1]), grpc.StatusCode.INVALID_ARGUMENT, "lengths"),
    ("NaN", grpc_request(values=np.full((1, 3, F), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("over max length", grpc_request(shape=(1, 101, F)), grpc.StatusCode.INVALID_ARGUMENT, "limit"),
    ("over batch limit", grpc_request(shape=(9, 1, F)), grpc.StatusCode.RESOURCE_EXHAUSTED, "batch 9"),
    ("unknown model", grpc_request(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("unknown version", grpc_request(version="42"), grpc.StatusCode.NOT_FOUND, "42"),
    ("no data", grpc_request(raw=False), grpc.StatusCode.INVALID_ARGUMENT, "needs"),
    ("message over size", grpc_request(shape=(8, 2500, F)), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


@pytest.mark.parametrize("name, request_, code, text", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_matrix(limited, name, request_, code, text):
    with grpc.insecure_channel(limited.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or "")


def test_server_is_healthy_after_the_matrix(limited):
    assert httpx.get(limited.url + "/readyz").status_code == 200
    r = httpx.post(limited.url + "/predict", json={"sequences": [OK_SEQ]}, timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    metrics = httpx.get(limited.url + "/metrics").text
    assert 'rnnserve_errors_total{kind="invalid_input",transport="http_json"}' in metrics
    assert "rnnserve_errors_total{kind=\"unprocessable\",transport=\"grpc\"}" in metrics
