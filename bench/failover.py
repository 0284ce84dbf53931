"""Failover benchmark: live streams on a Redis Cluster (3 primaries, a replica each) while one primary is
SIGKILLed mid-run, ``--kills`` times (a fresh cluster and server each time). The client follows the
documented retry rule with ``sequence_offset`` (docs/OPERATIONS.md), which is also how it measures what
the asynchronous replica lost: a 503 saying the stream is behind the chunk means answered chunks are
gone (counted, then resent from there), a 400 asking for START means the stream's START was.

    .venv/bin/python -m rnnserve.bench.failover --streams 1000 --rate 300 --kills 5

Per kill: the promotion time (the harness watching the cluster), how long the dead primary's streams
got no answer as the client saw it (first 503 to the last stream's recovery), the 503s, the chunks the
other streams had answered meanwhile, and the answered chunks and timesteps lost with the primary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rnnserve.bench.serving import cpu_set, default_cpus
from rnnserve.bench.streams import chunk_request
from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.rediscluster import RedisClusterServer

BEHIND = re.compile(r"but the stream is at (\d+): the chunks before it are missing")


@dataclass
class Tally:
    killed_at: float = 0.0
    answered: int = 0
    after_kill: list = field(default_factory=list)  # (stream, time) of every answer after the kill
    hit: set = field(default_factory=set)  # streams that got a 503
    unavailable: int = 0  # 503s
    lost_chunks: int = 0  # answered, then gone with the primary
    lost_steps: int = 0
    lost_starts: int = 0
    first_503: float | None = None
    recovered: dict = field(default_factory=dict)  # stream -> first answer after its last 503


async def one_stream(stub, model: str, sid: int, features: int, interval: float, stop_at: float, t: Tally,
                     rng) -> None:
    """A stream under the retry rule: one chunk every ``interval`` s, each with its offset."""
    import grpc

    at, acked, down = 0, 0, False
    await asyncio.sleep(float(rng.uniform(0, interval)))
    while time.monotonic() < stop_at:
        n = int(rng.integers(1, 11))
        frm = at
        while True:
            x = rng.standard_normal((at + n - frm, features)).astype(np.float32)
            try:
                await stub.ModelInfer(chunk_request(model, x, sid, frm == 0, False, frm), timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "START flag" in exc.details():
                    t.lost_starts += 1
                    t.lost_steps += acked
                    frm = 0
                elif exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                else:
                    t.unavailable += 1
                    t.first_503 = t.first_503 or time.monotonic()
                    t.hit.add(sid)
                    down = True
                    behind = BEHIND.search(exc.details() or "")
                    if behind:
                        t.lost_chunks += 1
                        t.lost_steps += acked - int(behind.group(1))
                        frm = int(behind.group(1))
                await asyncio.sleep(0.02)
        at = acked = at + n
        t.answered += 1
        if t.killed_at:
            t.after_kill.append((sid, time.monotonic()))
        if down:
            t.recovered[sid] = time.monotonic()
            down = False
        await asyncio.sleep(interval)


async def run_streams(grpc_url: str, model: str, features: int, streams: int, interval: float, duration: float,
                      kill_after: float, cluster: RedisClusterServer, seed: int) -> tuple[Tally, float, int]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    rng = np.random.default_rng(seed)
    t = Tally()
    channels = [grpc.aio.insecure_channel(grpc_url) for _ in range(8)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    stop_at = time.monotonic() + duration
    tasks = [asyncio.create_task(one_stream(stubs[k % 8], model, 1 + k, features, interval, stop_at, t,
                                            np.random.default_rng(rng.integers(1 << 31))))
             for k in range(streams)]
    await asyncio.sleep(kill_after)
    port = cluster.primaries()[0]
    cluster.kill(port)
    t.killed_at = time.monotonic()
    promoted = await asyncio.to_thread(cluster.wait_failover, port)
    await asyncio.gather(*tasks)
    for c in channels:
        await c.close()
    return t, promoted, port


def one_kill(args, model: str, features: int, seed: int) -> dict:
    settings = {"RNNSERVE_STREAMS__MAX_STREAMS": str(max(args.streams * 2, 100)),
                "RNNSERVE_RUNTIME__INTRA_OP_THREADS": str(len(cpu_set(args.server_cpus))),
                "RNNSERVE_STREAMS__STORE_TIMEOUT_S": "0.5"}
    with RedisClusterServer(cpus=args.server_cpus) as cluster:
        settings["RNNSERVE_STREAMS__STORE"] = cluster.url
        with ServerProcess(model, settings, cpus=args.server_cpus) as srv:
            t, promoted, port = asyncio.run(run_streams(srv.grpc_url, model, features, args.streams,
                                                        args.streams / args.rate, args.duration, args.kill_after,
                                                        cluster, seed))
    window = (max(t.recovered.values()) - t.killed_at) if t.recovered else 0.0
    others = sum(1 for sid, at in t.after_kill if sid not in t.hit and at <= t.killed_at + window)
    return {"streams": args.streams, "rate": args.rate, "promoted_s": promoted, "no_answer_window_s": window,
            "streams_hit": len(t.recovered), "unavailable_503s": t.unavailable, "answered": t.answered,
            "answered_by_others_while_down": others, "lost_chunks": t.lost_chunks,
            "lost_steps": t.lost_steps, "lost_starts": t.lost_starts, "killed_primary": port}


def main(argv=None) -> int:
    server_default, client_default = default_cpus()
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.failover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--rate", type=float, default=300.0, help="chunks per second offered in all")
    p.add_argument("--duration", type=float, default=25.0, help="seconds of streaming per kill")
    p.add_argument("--kill-after", type=float, default=8.0, help="seconds into the run the primary dies")
    p.add_argument("--kills", type=int, default=3, help="runs, each with a fresh cluster and server")
    p.add_argument("--server-cpus", default=server_default)
    p.add_argument("--client-cpus", default=client_default)
    p.add_argument("--out", default="bench/results/failover.json")
    args = p.parse_args(argv)
    from rnnserve.bundle.manifest import load

    bundle = load(f"{args.model}:latest")
    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    results = []
    for k in range(args.kills):
        results.append(one_kill(args, args.model, bundle.num_features, seed=k))
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "kills": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
