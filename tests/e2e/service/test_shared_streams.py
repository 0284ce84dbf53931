"""Streams that outlive a worker, against the real ``rnnserve serve`` with 2 BentoML workers and a
real redis-server: chunks spread over both workers, a worker SIGKILLed mid-stream, and Redis
restarted under load. Every chunk goes over a fresh connection (HTTP and gRPC alternating), so
consecutive chunks of one stream land on either worker; every answer must equal a plain request on
that prefix.

The client follows the documented retry rule (docs/OPERATIONS.md, "Streams"): each chunk carries
``sequence_offset``; a chunk without an answer (connection lost, 503 / UNAVAILABLE) is resent as is;
a stream the store no longer has (400 "must specify the START flag" after a Redis restart without
persistence) is started again with its whole prefix."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from rnnserve.bench.streams import chunk_request
from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import page_of, total
from rnnserve.service.runtime.onnx import usable_cpus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
F = 4
ATOL = 1e-5


class NoAnswer(Exception):
    """Retryable: no answer came (transport failure, 503 / UNAVAILABLE)."""


class Refused(Exception):
    def __init__(self, status, text):
        super().__init__(f"{status}: {text}")
        self.status, self.text = status, text


async def http_chunk(url: str, sid, x: np.ndarray, start: bool, end: bool, offset: int) -> np.ndarray:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(x), F], "data": x.ravel().tolist()}],
            "parameters": {"sequence_id": sid, "sequence_start": start, "sequence_end": end,
                           "sequence_offset": offset}}
    try:
        async with httpx.AsyncClient(timeout=30) as client:  # a connection of its own: any worker takes it
            r = await client.post(f"{url}/v2/models/tiny/infer", json=body)
    except httpx.TransportError as exc:
        raise NoAnswer(f"http: {type(exc).__name__}") from exc
    if r.status_code == 503:
        raise NoAnswer(f"503: {r.json()['error']}")
    if r.status_code != 200:
        raise Refused(r.status_code, r.text)
    return np.array(next(o for o in r.json()["outputs"] if o["name"] == "output")["data"], np.float32)


async def grpc_chunk(target: str, sid, x: np.ndarray, start: bool, end: bool, offset: int) -> np.ndarray:
    try:
        async with grpc.aio.insecure_channel(target) as channel:  # a connection of its own
            reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                chunk_request("tiny", x, sid, start, end, offset), timeout=30)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise NoAnswer(f"grpc: {exc.details()}") from exc
        raise Refused(exc.code().name, exc.details()) from exc
    return np.frombuffer(reply.raw_output_contents[0], np.float32)


@dataclass
class Log:
    answers: int = 0
    resent: int = 0
    restarted: int = 0
    no_answer: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


def chunks_of(n: int, rng) -> list[int]:
    sizes, at = [], 0
    while at < n:
        sizes.append(min(n - at, int(rng.choice([1, 2, 3, 5, 9]))))
        at += sizes[-1]
    return sizes


async def stream(srv: ServerProcess, sid, seq: np.ndarray, sizes: list[int], reference, log: Log,
                 deadline: float, pause: float = 0.0) -> None:
    """One stream under the retry rule; checks every answer against a plain request on its prefix."""
    at = 0
    for k, n in enumerate(sizes):
        end = k == len(sizes) - 1
        x, start, offset = seq[at : at + n], k == 0, at
        while True:
            send = (http_chunk, srv.url) if (k + log.resent) % 2 else (grpc_chunk, srv.grpc_url)
            try:
                got = await send[0](send[1], sid, x, start, end, offset)
                break
            except NoAnswer as exc:
                log.no_answer.append(str(exc))
                log.resent += 1
            except Refused as exc:
                if "must specify the START flag" not in exc.text:
                    raise
                log.restarted += 1  # the store lost it (Redis restarted empty): start again, whole prefix
                x, start, offset = seq[: at + n], True, 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {sid}: no answer for its chunk at {at} in time: {log.no_answer[-3:]}")
            await asyncio.sleep(0.05)
        at += n
        log.answers += 1
        err = float(np.abs(got - reference(seq[:at])).max())
        if not err <= ATOL:
            log.wrong.append(f"stream {sid} at {at}: {err:.2e}")
        if pause:
            await asyncio.sleep(pause)


def workers(srv: ServerProcess) -> list[psutil.Process]:
    return srv.workers()


def kill_while_serving(worker: psutil.Process, ports: set[int], tries: int = 200) -> int:
    """SIGKILL ``worker`` at an instant it holds a client's open connection (a chunk it has taken and not
    answered: each chunk has a connection of its own, closed once answered). The worker is stopped while
    its sockets are looked at, so the instant cannot pass; returns how many connections it held.

    A connection whose chunk was answered just before the stop is still open on the worker's side until
    the client's close arrives; the kernel turns it to CLOSE_WAIT while the worker is stopped, so after a
    short stop only connections whose client still waits for an answer are ESTABLISHED."""
    for _ in range(tries):
        worker.suspend()
        time.sleep(0.2)  # answered chunks' clients close meanwhile (on a loaded machine 50 ms was not enough)
        held = [c for c in worker.net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in ports]
        if held:
            worker.kill()
            return len(held)
        worker.resume()
        time.sleep(0.005)
    raise AssertionError(f"worker {worker.pid} never held a client connection in {tries} looks")


def chunk_counts_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Stream chunks answered per worker process, from each worker's own Prometheus file."""
    counts = {}
    for f in metrics_dir.glob("histogram_*.db"):
        one = metrics_dir / f"single-{f.stem}"
        one.mkdir(exist_ok=True)
        (one / f.name).write_bytes(f.read_bytes())
        n = total(page_of(one), "rnnserve_stream_chunk_duration_seconds_count")
        if n:
            counts[f.stem] = n
    return counts


def make_streams(count: int, seed: int, max_len: int = 60):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        sid = 5000 + i if i % 2 else f"shared-{seed}-{i}"
        seq = rng.standard_normal((int(rng.integers(8, max_len)), F)).astype(np.float32)
        out[sid] = (seq, chunks_of(len(seq), rng))
    return out


@pytest.fixture
def two_workers(tiny_bundle, redis_server, tmp_path):
    settings = {"RNNSERVE_SERVER__WORKERS": "2", "RNNSERVE_STREAMS__STORE": redis_server.url,
                "RNNSERVE_SERVER__METRICS_DIR": str(tmp_path / "metrics")}
    with ServerProcess("tiny", settings) as srv:
        yield srv, tmp_path / "metrics"


def test_two_workers_share_the_cpus_between_their_sessions(two_workers):
    srv, _ = two_workers  # intra-op threads left at 0: the CPUs are divided among the workers
    threads = max(1, usable_cpus() // 2)
    assert Path(srv.log.name).read_text().count(f"), {threads} intra-op thread(s), graph") == 2


def test_32_streams_over_two_workers_match_a_plain_request_on_every_prefix(two_workers, reference):
    srv, metrics_dir = two_workers
    log = Log()
    streams = make_streams(32, seed=1)

    async def main():
        deadline = time.monotonic() + 120
        await asyncio.gather(*(stream(srv, sid, seq, sizes, reference, log, deadline)
                               for sid, (seq, sizes) in streams.items()))

    asyncio.run(main())
    assert log.wrong == [] and log.answers == sum(len(s) for _, s in streams.values()) > 200
    assert log.no_answer == []  # nothing failed: no resend was needed
    per_worker = chunk_counts_per_worker(metrics_dir)
    assert len(per_worker) == 2, per_worker  # both workers served chunks of the same streams
    text = httpx.get(srv.url + "/metrics").text
    assert "rnnserve_stream_store_round_trips_total" in text


def test_a_worker_killed_mid_stream_loses_nothing(two_workers, reference):
    """SIGKILL one of two workers while 32 streams are live: chunks in flight there get no answer and
    are resent (same sequence_offset); every stream completes with every answer right."""
    srv, _ = two_workers
    log = Log()
    streams = make_streams(32, seed=2, max_len=120)
    before = workers(srv)
    assert len(before) == 2

    async def main():
        deadline = time.monotonic() + 180
        tasks = [asyncio.create_task(stream(srv, sid, seq, sizes, reference, log, deadline, pause=0.01))
                 for sid, (seq, sizes) in streams.items()]
        while log.answers < 150:
            await asyncio.sleep(0.02)
        ports = {srv.http_port, srv.grpc_port}
        await asyncio.to_thread(kill_while_serving, before[0], ports)  # the clients go on meanwhile
        killed_at = log.answers
        await asyncio.gather(*tasks)
        return killed_at

    killed_at = asyncio.run(main())
    sent = sum(len(s) for _, s in streams.values())
    assert log.wrong == [], log.wrong[:5]
    assert log.answers == sent and killed_at < sent  # the kill came mid-way, and every chunk was answered
    assert log.resent >= 1, "no chunk was in flight at the killed worker?"
    assert log.restarted == 0  # the state outlived the worker: no stream had to start again
    deadline = time.time() + 60
    while len(after := workers(srv)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(after) == 2 and before[0].pid not in {p.pid for p in after}  # BentoML replaced it


def test_redis_restarted_under_load(tiny_bundle, redis_server, reference):
    """While Redis is down, stream chunks get 503 / UNAVAILABLE quickly and plain requests go on;
    after it is back (empty: no persistence) streams start again and every answer is right."""
    settings = {"RNNSERVE_STREAMS__STORE": redis_server.url, "RNNSERVE_STREAMS__STORE_TIMEOUT_S": "0.5"}
    with ServerProcess("tiny", settings) as srv:
        log = Log()
        streams = make_streams(16, seed=3, max_len=200)
        plain_ok, plain_bad, down_latency = [], [], []
        rng = np.random.default_rng(4)
        plain_seqs = [rng.standard_normal((int(rng.integers(3, 40)), F)).astype(np.float32) for _ in range(8)]

        async def plain(stop: asyncio.Event):
            async with httpx.AsyncClient(timeout=30) as client:
                k = 0
                while not stop.is_set():
                    s = plain_seqs[k % len(plain_seqs)]
                    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(s), F],
                                        "data": s.ravel().tolist()}]}
                    r = await client.post(srv.url + "/v2/models/tiny/infer", json=body)
                    if r.status_code == 200 and np.abs(np.array(r.json()["outputs"][0]["data"]) -
                                                       reference(s)).max() <= ATOL:
                        plain_ok.append(time.monotonic())
                    else:
                        plain_bad.append(r.text)
                    k += 1
                    await asyncio.sleep(0.01)

        async def outage(started: asyncio.Event):
            await started.wait()
            redis_server.stop()
            t_down = time.monotonic()
            await asyncio.sleep(0.3)
            t0 = time.perf_counter()
            with pytest.raises(NoAnswer, match="stream store unavailable"):
                await http_chunk(srv.url, "probe", np.ones((2, F), np.float32), True, False, 0)
            down_latency.append(time.perf_counter() - t0)
            ready = httpx.get(srv.url + "/readyz").status_code
            await asyncio.sleep(1.5)
            redis_server.start()
            return t_down, time.monotonic(), ready

        async def main():
            stop, started = asyncio.Event(), asyncio.Event()
            deadline = time.monotonic() + 120
            plain_task = asyncio.create_task(plain(stop))
            streams_task = asyncio.gather(*(stream(srv, sid, seq, sizes, reference, log, deadline, pause=0.02)
                                            for sid, (seq, sizes) in streams.items()))
            while log.answers < 40:
                await asyncio.sleep(0.02)
            started.set()
            window = await outage(started)
            await streams_task
            stop.set()
            await plain_task
            return window

        t_down, t_up, ready = asyncio.run(main())
    assert log.wrong == [] and plain_bad == []
    assert log.answers == sum(len(s) for _, s in streams.values())
    assert any("stream store unavailable" in m for m in log.no_answer)  # streams failed cleanly while down
    assert log.restarted >= 1  # and came back: the empty store made them start again
    assert sum(t_down < t < t_up for t in plain_ok) >= 5  # plain requests went on during the outage
    assert down_latency[0] < 5.0 and ready == 200  # quick; readiness does not follow the store (documented)
