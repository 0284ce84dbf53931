"""Streams on a Redis Cluster, against the real ``rnnserve serve`` with 2 BentoML workers and a real local
cluster (3 primaries + 3 replicas): 64 streams through stock ``tritonclient`` (its asyncio gRPC and HTTP
clients, a new connection per chunk, so consecutive chunks land on either worker), their keys on every
primary, a worker SIGKILLed mid-stream, then a primary SIGKILLed mid-stream and replaced by its replica
(automatic failover). Every answer must equal a plain request on that prefix.

The client follows the documented retry rule (docs/OPERATIONS.md, "Streams across workers and
replicas"): every chunk carries ``sequence_offset``; a chunk without an answer (connection lost, 503 /
UNAVAILABLE) is resent as is; a 503 saying the stream is behind the chunk (the store lost answered chunks
in the failover: an asynchronous replica) makes it resend the data from where the stream is; a stream
the store no longer has (400 "must specify the START flag") is started again with its whole prefix."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as tgrpc
import tritonclient.http.aio as thttp
from tritonclient.utils import InferenceServerException

from rnnserve.harness.launch import ServerProcess
from tests.e2e.service.test_shared_streams import ATOL, F, Log, NoAnswer, Refused, kill_while_serving, make_streams

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Behind(Exception):
    """503: the stream is at ``steps``, behind the chunk: the store lost chunks that were answered."""

    def __init__(self, steps: int) -> None:
        super().__init__(steps)
        self.steps = steps


@dataclass
class ClusterLog(Log):
    lost_steps: list[int] = field(default_factory=list)  # per chunk sent behind a stream that lost steps


def classify(status: str, message: str) -> Exception:
    """The retry rule's reading of an error from either tritonclient."""
    if status in ("503", "StatusCode.UNAVAILABLE"):
        behind = re.search(r"but the stream is at (\d+): the chunks before it are missing", message)
        return Behind(int(behind.group(1))) if behind else NoAnswer(f"{status}: {message}")
    return Refused(status, message)


async def triton_chunk(srv: ServerProcess, over_grpc: bool, sid, x: np.ndarray, start: bool, end: bool,
                       offset: int) -> np.ndarray:
    """One chunk through a new tritonclient (a connection of its own: either worker may take it)."""
    lib = tgrpc if over_grpc else thttp
    client = lib.InferenceServerClient(srv.grpc_url if over_grpc else srv.url.removeprefix("http://"))
    inp = lib.InferInput("input", [1, len(x), F], "FP32")
    inp.set_data_from_numpy(x[None])
    try:
        result = await client.infer("tiny", [inp], sequence_id=sid, sequence_start=start, sequence_end=end,
                                    parameters={"sequence_offset": offset})
        return result.as_numpy("output")[0]
    except InferenceServerException as exc:
        raise classify(str(exc.status()), exc.message()) from exc
    except (aiohttp.ClientError, OSError) as exc:  # the connection broke (a worker killed while it held the chunk)
        raise NoAnswer(f"http: {type(exc).__name__}") from exc
    finally:
        await client.close()


async def stream(srv, sid, seq: np.ndarray, sizes: list[int], reference, log: ClusterLog, deadline: float) -> None:
    """One stream under the retry rule; every answer is checked against a plain request on its prefix."""
    at = 0
    for k, n in enumerate(sizes):
        end = k == len(sizes) - 1
        frm, start = at, k == 0  # the chunk carries seq[frm : at + n]
        while True:
            try:
                got = await triton_chunk(srv, (k + log.resent) % 2 == 0, sid, seq[frm : at + n], start, end, frm)
                break
            except NoAnswer as exc:
                log.no_answer.append(str(exc))
                log.resent += 1
            except Behind as exc:  # answered chunks lost with a primary: resend the data from there
                log.no_answer.append(f"behind: at {exc.steps}, chunk at {frm}")
                log.lost_steps.append(frm - exc.steps)
                frm = exc.steps
            except Refused as exc:
                if "must specify the START flag" not in exc.text:
                    raise
                log.restarted += 1  # the store lost the whole stream: start again with its whole prefix
                frm, start = 0, True
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {sid}: no answer for its chunk at {at} in time: {log.no_answer[-3:]}")
            await asyncio.sleep(0.05)
        at += n
        log.answers += 1
        err = float(np.abs(got - reference(seq[:at])).max())
        if not err <= ATOL:
            log.wrong.append(f"stream {sid} at {at}: {err:.2e}")
        await asyncio.sleep(0.01)


def stream_keys(cluster, port: int) -> int:
    with cluster.client(port) as c:
        return sum(1 for _ in c.scan_iter(match="rnnserve:{tiny/*}:[is]:*", count=1000))


@pytest.fixture
def cluster_workers(tiny_bundle, redis_cluster, tmp_path):
    settings = {"RNNSERVE_SERVER__WORKERS": "2", "RNNSERVE_STREAMS__STORE": redis_cluster.url,
                "RNNSERVE_STREAMS__STORE_TIMEOUT_S": "0.5"}
    with ServerProcess("tiny", settings) as srv:
        yield srv, redis_cluster


def test_64_streams_survive_a_worker_and_a_primary_killed(cluster_workers, reference):
    srv, cluster = cluster_workers
    log = ClusterLog()
    streams = make_streams(64, seed=7, max_len=160)
    sent = sum(len(s) for _, s in streams.values())
    workers = srv.workers()
    assert len(workers) == 2
    seen = {}

    async def main():
        deadline = time.monotonic() + 240
        tasks = [asyncio.create_task(stream(srv, sid, seq, sizes, reference, log, deadline))
                 for sid, (seq, sizes) in streams.items()]
        while log.answers < 150:
            await asyncio.sleep(0.02)
        seen["keys"] = {port: stream_keys(cluster, port) for port in cluster.primaries()}
        seen["workers"] = await asyncio.to_thread(kill_while_serving, workers[0], {srv.http_port, srv.grpc_port})
        target = log.answers + 150
        while log.answers < target:
            await asyncio.sleep(0.02)
        port = cluster.primaries()[0]
        cluster.kill(port)
        seen["killed_at"], seen["no_answer_before"] = log.answers, len(log.no_answer)
        seen["failover_s"] = await asyncio.to_thread(cluster.wait_failover, port)
        seen["primary"] = port
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert log.wrong == [], log.wrong[:5]
    assert log.answers == sent and seen["killed_at"] < sent  # the primary died mid-way; every chunk answered
    keys = seen["keys"]
    assert len(keys) == 3 and min(keys.values()) > 0, keys  # the streams' keys were on every primary
    assert seen["workers"] >= 1 and log.resent >= 1  # the worker died holding chunks; they were resent
    during = [m for m in log.no_answer[seen["no_answer_before"]:] if not m.startswith("behind")]
    dead = f"primary 127.0.0.1:{seen['primary']}: unreachable"
    assert during and all(dead in m for m in during), during[:5]  # 503s for its streams only, naming it
    print(f"\nfailover {seen['failover_s']:.1f} s; 503s/no answer after the primary died: {len(during)}; "
          f"chunks resent: {log.resent}; answered steps lost with the primary: {sum(log.lost_steps)} "
          f"in {len(log.lost_steps)} chunk(s); streams restarted: {log.restarted}")
