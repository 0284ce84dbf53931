"""bench/serving's clients: requests of several sequences each, and the closed loops count sequences."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest

from rnnserve.bench.serving import closed_loop, closed_loop_http, http_requests, infer_requests, response_head

F = 4


def seqs(lengths):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((t, F)).astype(np.float32) for t in lengths]


def test_a_batched_request_pads_to_its_longest_sequence_and_carries_every_length():
    sample = seqs([5, 9, 2, 7, 3])
    first, last = infer_requests("m", sample, per_request=3)
    assert [i.name for i in first.inputs] == ["input", "lengths"]
    assert list(first.inputs[0].shape) == [3, 9, F] and list(last.inputs[0].shape) == [2, 7, F]
    x = np.frombuffer(first.raw_input_contents[0], np.float32).reshape(3, 9, F)
    assert np.frombuffer(first.raw_input_contents[1], np.int64).tolist() == [5, 9, 2]
    for row, s in zip(x, sample[:3], strict=True):
        assert np.array_equal(row[: len(s)], s) and not row[len(s):].any()
    assert len(infer_requests("m", sample)) == 5  # one per sequence unless asked


def post(port: int, raw: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        status, length = response_head(head + b"\r\n\r\n")
        while len(body) < length:
            body += sock.recv(65536)
    return status, body


@pytest.mark.e2e
def test_the_server_answers_each_sequence_of_a_batched_request_as_if_sent_alone(server, reference):
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    sample = seqs([3, 40, 17, 1, 64, 8])
    want = np.stack([reference(s) for s in sample])
    with grpc.insecure_channel(server.grpc_url) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        replies = [stub.ModelInfer(r, timeout=30) for r in infer_requests("tiny", sample, per_request=4)]
    got = [np.frombuffer(r.raw_output_contents[0], np.float32).reshape(-1, want.shape[1]) for r in replies]
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-4)

    host = f"127.0.0.1:{server.http_port}"
    (v2_first, v2_last), (json_first, _) = (http_requests("tiny", sample, t, host, 4) for t in ("http_v2", "http_json"))
    status, body = post(server.http_port, v2_first)
    header = json.loads(body[: len(body) - 4 * 4 * want.shape[1]])
    assert status == 200 and header["outputs"][0]["shape"] == [4, want.shape[1]]
    assert post(server.http_port, v2_last)[0] == 200
    status, body = post(server.http_port, json_first)
    assert status == 200 and len(json.loads(body)["predictions"]) == 4


@pytest.mark.e2e
def test_closed_loops_count_the_sequences_their_requests_carry(server):
    sample = seqs([3, 40, 17, 1, 64, 8, 12, 5])
    for stream in (False, True):
        r = asyncio.run(closed_loop(server.grpc_url, infer_requests("tiny", sample, per_request=4), 2, 1.0, 0.2,
                                    stream=stream))
        assert r["errors"] == 0 and r["requests"] > 0 and r["sequences"] == 4 * r["requests"]
    host = f"127.0.0.1:{server.http_port}"
    requests = http_requests("tiny", sample[:7], "http_v2", host, 4)  # 4 + 3 sequences
    r = asyncio.run(closed_loop_http("127.0.0.1", server.http_port, requests, 1, 1.0, 0.2, counts=[4, 3]))
    assert r["errors"] == 0 and r["requests"] > 1 and 3 * r["requests"] <= r["sequences"] <= 4 * r["requests"]
    one = asyncio.run(closed_loop_http("127.0.0.1", server.http_port, requests[:1], 1, 0.5, 0.1))
    assert one["sequences"] == one["requests"]  # without counts, one each


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("transport, configs", [("grpc", "t_tls"), ("http_v2", "t_tls,r_restricted")])
def test_the_tls_and_restricted_configs_serve_every_request(tiny_bundle, tmp_path, transport, configs):
    """(t) and (r) of bench/serving: their clients speak TLS / carry the key, so nothing is refused. (In
    a process of its own: the benchmark pins itself to the client's CPUs.)"""
    import subprocess
    import sys

    out = tmp_path / "serving.json"
    done = subprocess.run([sys.executable, "-m", "rnnserve.bench.serving", "--model", "tiny", "--configs",
                           configs, "--duration", "1", "--warmup", "0.3", "--requests", "64",
                           "--concurrency", "4", "--transport", transport, "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "TLS on vs off: server CPU per sequence" not in done.stdout  # no (a) in this run: no ratio
    results = json.loads(out.read_text())["results"]
    for name in configs.split(","):
        assert results[name]["errors"] == 0 and results[name]["sequences"] > 0, results[name]
