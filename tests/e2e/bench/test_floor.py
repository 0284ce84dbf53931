"""bench/floor: each do-nothing server answers real v2 clients, and the measurement counts its CPU."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from rnnserve.bench import floor

F, C = 4, 3


@pytest.mark.e2e
@pytest.mark.parametrize("kind", floor.SERVERS)
def test_floor_server_answers_the_benchmark_client_and_its_cpu_is_counted(kind):
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    seqs = [np.ones((t, F), np.float32) for t in (3, 40)]
    args = SimpleNamespace(server_cpus=cpus, threads=8, concurrency=4, duration=1.0, warmup=0.3)
    result = floor.measure(kind, "m", C, seqs, args)
    assert result["requests"] > 0 and result["errors"] == 0
    assert result["server_cpu_us_per_req"] > 0 and result["client_cpu_us_per_req"] > 0


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["grpc_sync_loop", "grpclib"])
def test_grpc_floor_answers_tritonclient_with_the_output_shape(kind):
    import tritonclient.grpc as tgrpc

    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    with floor.FloorServer(kind, "m", C, cpus, threads=2) as srv:
        client = tgrpc.InferenceServerClient(srv.grpc_url)
        inp = tgrpc.InferInput("input", [1, 5, F], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 5, F), np.float32))
        assert client.infer("m", [inp]).as_numpy("output").shape == (1, C)
    assert srv.proc.poll() is not None


@pytest.mark.e2e
def test_stream_floor_answers_each_message_of_a_tritonclient_stream():
    import queue

    import tritonclient.grpc as tgrpc

    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    answers: queue.Queue = queue.Queue()
    with floor.FloorServer("grpc_aio_stream", "m", C, cpus) as srv:
        client = tgrpc.InferenceServerClient(srv.grpc_url)
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        inp = tgrpc.InferInput("input", [1, 5, F], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 5, F), np.float32))
        for _ in range(3):
            client.async_stream_infer("m", [inp])
        got = [answers.get(timeout=10) for _ in range(3)]
        client.stop_stream()
    assert all(error is None and result.as_numpy("output").shape == (1, C) for result, error in got)


def test_report_gives_the_lowest_ratio_each_floor_allows():
    r = {"throughput_seq_s": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "server_cpu_us_per_req": 150.0}
    text = floor.report({"grpc_aio": [r]}, model_us=300.0)
    assert "| grpc_aio | 1,000 | 1.0 / 2.0 | 150 | 1.50 |" in text and "300 µs" in text
    rounds = [dict(r, server_cpu_us_per_req=v) for v in (200.0, 90.0, 120.0)]  # the median round is shown
    assert "| http | 1,000 | 1.0 / 2.0 | 120 (200, 90, 120) | 1.40 |" in floor.report({"http": rounds}, 300.0)
