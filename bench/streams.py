"""Streams benchmark: many concurrent live streams, each sending one chunk every ``--interval``
seconds (a live feed), over v2 gRPC with Triton's sequence parameters, against a server this script
starts. The client runs on its own CPUs (``--client-cpus``) and the server on others; chunk latency is
measured at the client, so it includes the client.

    .venv/bin/python -m rnnserve.bench.streams --streams 100,1000,10000 --interval 1 --duration 30
    .venv/bin/python -m rnnserve.bench.streams --resend --streams 64   # streaming vs resending the prefix
    .venv/bin/python -m rnnserve.bench.streams --store memory,redis --repeat 2 --streams 100,1000
    .venv/bin/python -m rnnserve.bench.streams --store redis,cluster --streams 1000,10000 --rate 500
    .venv/bin/python -m rnnserve.bench.streams --streams 1000 --repeat 3 --baseline /tmp/main-before

``--store``: where stream state lives, side by side in one run (interleaved, ``--repeat`` times):
``memory`` (in-process), ``redis`` (a redis-server this script starts on the server's CPUs) or
``cluster`` (a Redis Cluster of 3 primaries, ``--cluster-replicas`` replicas each, there too). With
Redis it also reports the store's round trips per scheduler iteration and the reads + writes each
round trip carried (``rnnserve_stream_store_*`` against ``rnnserve_batch_sequences``): O(1) round
trips per iteration means the first stays flat while the streams per iteration grow; and Redis's own
CPU per chunk (per primary on a cluster, its replicas apart), its memory per stream, and the keys on
each primary. ``--rate``: chunks per second offered in all (each stream's interval is then streams /
rate), so live-stream counts compare at one chunk rate.

Per stream count: chunks answered per second, chunk latency p50 / p99, errors, the streams the server
reports live (``rnnserve_streams_active``) and the worker's memory per stream (RSS with the streams
held minus RSS before, divided by the count). ``--resend`` compares, on the same sequences, a stateful
client (one chunk at a time) with a stateless one that must send the whole prefix every time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

from rnnserve.bench.serving import WindowCPU, baseline_server, cpu_set, default_cpus
from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import total
from rnnserve.harness.redis import RedisServer, used_memory
from rnnserve.loadtests.payloads import datatype

CHUNK_MIX = (1, 2, 5, 10, 20)  # timesteps per chunk, drawn uniformly


def chunk_request(model: str, x: np.ndarray, sid, start: bool, end: bool, offset: int | None = None):
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype(x), shape=[1, *x.shape]))
    req.raw_input_contents.append(x.tobytes())
    req.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name="output"))
    if sid is not None:
        if isinstance(sid, str):
            req.parameters["sequence_id"].string_param = sid
        else:
            req.parameters["sequence_id"].int64_param = sid
        req.parameters["sequence_start"].bool_param = start
        req.parameters["sequence_end"].bool_param = end
        if offset is not None:  # the stream's timesteps before this chunk: exactly-once resends
            req.parameters["sequence_offset"].int64_param = offset
    return req


async def live_streams(grpc_url: str, model: str, features: int, streams: int, interval: float, duration: float,
                       warmup: float, channels: int = 8, seed: int = 0) -> dict:
    """``streams`` concurrent streams, each sending a chunk every ``interval`` s (random phase)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    rng = np.random.default_rng(seed)
    payloads = [rng.standard_normal((n, features)).astype(np.float32) for n in CHUNK_MIX for _ in range(8)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    opened = asyncio.Event()
    started_count = 0
    chans = [grpc.aio.insecure_channel(grpc_url) for _ in range(channels)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in chans]

    async def stream(k: int):
        nonlocal started_count
        stub = stubs[k % channels]
        sid = 1 + k
        phase = rng.uniform(0, interval)
        await asyncio.sleep(phase * min(1.0, warmup / max(interval, 1e-9)))  # spread the starts over the warm-up
        first = True
        tick = time.perf_counter()
        while (now := time.perf_counter()) < stop_at:
            x = payloads[int(rng.integers(len(payloads)))]
            try:
                await stub.ModelInfer(chunk_request(model, x, sid, first, False), timeout=30)
                done = time.perf_counter()
                if first:
                    started_count += 1
                    if started_count == streams:
                        opened.set()
                first = False
                if now >= measure_from:
                    latencies.append(done - now)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                first = True  # start over (a lost stream)
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        try:
            await stub.ModelInfer(chunk_request(model, payloads[0], sid, False, True), timeout=30)
        except grpc.aio.AioRpcError:
            pass

    tasks = [asyncio.create_task(stream(k)) for k in range(streams)]
    await asyncio.gather(*tasks)
    for c in chans:
        await c.close()
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"streams": streams, "interval_s": interval, "chunks_per_s": len(latencies) / duration,
            "offered_chunks_per_s": streams / interval, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "chunks": len(latencies), "errors": errors,
            "all_started": opened.is_set()}


def worker_rss_mib(pid: int) -> float:
    import psutil

    kids = [c for c in psutil.Process(pid).children(recursive=True) if "_bentoml_impl.worker" in " ".join(c.cmdline())]
    return sum(c.memory_info().rss for c in kids) / 2**20


def read_metrics(url: str) -> str:
    import urllib.request

    return urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()


async def measure(srv, args, model: str, features: int, n: int, sample: dict, redis=None) -> dict:
    async def held():  # the server's own count, mid-run
        await asyncio.sleep(args.warmup + args.duration / 2)
        text = await asyncio.to_thread(read_metrics, srv.url)
        sample["live"] = total(text, "rnnserve_streams_active") or total(text, "rnnserve_stream_store_streams")
        sample["state_bytes"] = total(text, "rnnserve_stream_state_bytes")
        sample["rss"] = worker_rss_mib(srv.proc.pid)
        if redis is not None:
            sample["redis_used"] = await asyncio.to_thread(redis.used_memory)
            sample["keys"] = await asyncio.to_thread(redis.keys)

    result, _ = await asyncio.gather(
        live_streams(srv.grpc_url, model, features, n, n / args.rate if args.rate else args.interval, args.duration,
                     args.warmup), held())
    return result


def run_streams(args, model: str, features: int) -> list[dict]:
    out = []
    stores = args.store.split(",")
    servers = ["this", "baseline"] if args.baseline else ["this"]
    for n in [int(v) for v in args.streams.split(",")]:
        for rep in range(args.repeat):
            for server in servers:
                for store in stores:
                    result = one_run(args, model, features, n, store, server)
                    result["repeat"] = rep
                    print(json.dumps(result), flush=True)
                    out.append(result)
    return out


class StoreUnderTest:
    """The Redis (one server, or a cluster) a run's stream store lives in: started on the server's CPUs,
    its processes' CPU over the measured window, its keys and memory mid-run."""

    def __init__(self, store: str, args) -> None:
        from rnnserve.harness.rediscluster import RedisClusterServer

        self.redis = self.cluster = None
        if store == "redis":
            self.redis = RedisServer(cpus=args.server_cpus).start()
        elif store == "cluster":
            self.cluster = RedisClusterServer(replicas=args.cluster_replicas, cpus=args.server_cpus).start()
        self.url = self.redis.url if self.redis else self.cluster.url if self.cluster else None
        self.primaries = [self.redis.port] if self.redis else self.cluster.primaries() if self.cluster else []
        nodes = [self.redis] if self.redis else self.cluster.nodes if self.cluster else []
        self.replicas = [n.port for n in nodes if n.port not in self.primaries]
        self.pids = {n.port: n.proc.pid for n in nodes}
        self.used0 = self.used_memory()

    def used_memory(self) -> int:
        return sum(used_memory(port) for port in self.primaries)

    def keys(self) -> list[int]:
        import redis

        out = []
        for port in self.primaries:
            with redis.Redis(host="127.0.0.1", port=port) as c:
                out.append(int(c.dbsize()))
        return out

    def windows(self, warmup: float, duration: float) -> dict:
        out = {port: WindowCPU(pid, warmup, duration) for port, pid in self.pids.items()}
        for w in out.values():
            w.start()
        return out

    def close(self) -> None:
        for server in (self.redis, self.cluster):
            if server is not None:
                server.__exit__()


def one_run(args, model: str, features: int, n: int, store: str, server: str = "this") -> dict:
    interval = n / args.rate if args.rate else args.interval
    settings = {"RNNSERVE_STREAMS__MAX_STREAMS": str(max(n * 2, 100)),
                "RNNSERVE_STREAMS__IDLE_TIMEOUT_S": str(max(60.0, 3 * interval)),  # streams idle between chunks
                "RNNSERVE_RUNTIME__INTRA_OP_THREADS": str(len(cpu_set(args.server_cpus))),
                "RNNSERVE_BATCHING__MAX_QUEUE": str(max(4096, n * 2))}
    redis = StoreUnderTest(store, args)
    try:
        if redis.url is not None:
            settings["RNNSERVE_STREAMS__STORE"] = redis.url
        extra = baseline_server(args.baseline) if server == "baseline" else {}
        with ServerProcess(model, settings, cpus=args.server_cpus, **extra) as srv:
            rss0 = worker_rss_mib(srv.proc.pid)
            window = WindowCPU(srv.proc.pid, args.warmup, args.duration)
            window.start()
            redis_windows = redis.windows(args.warmup, args.duration)
            sample: dict = {}
            before = read_metrics(srv.url)
            result = asyncio.run(measure(srv, args, model, features, n, sample, redis if redis.url else None))
            after = read_metrics(srv.url)
            window.join()
            for w in redis_windows.values():
                w.join()
    finally:
        redis.close()
    result.update({"store": store, "server": server, "server_live_streams": sample.get("live"),
                   "state_bytes": sample.get("state_bytes"), "worker_rss_mib": sample.get("rss"),
                   "rss_per_stream_kib": ((sample["rss"] - rss0) * 1024 / n) if sample.get("rss") else None,
                   "server_cpu_us_per_chunk": window.server / max(result["chunks"], 1) * 1e6})
    if redis.url is not None:
        per_chunk = {port: w.server / max(result["chunks"], 1) * 1e6 for port, w in redis_windows.items()}
        used = sample.get("redis_used")
        result.update({
            "redis_cpu_us_per_chunk": sum(per_chunk[p] for p in redis.primaries),
            "redis_cpu_us_per_chunk_per_primary": [per_chunk[p] for p in redis.primaries],
            "replica_cpu_us_per_chunk": sum(per_chunk[p] for p in redis.replicas),
            "keys_per_primary": sample.get("keys"),
            "redis_bytes_per_stream": (used - redis.used0) / n if used else None})
    result.update(store_counts(before, after))
    return result


def store_counts(before: str, after: str) -> dict:
    """Round trips to the store per scheduler iteration, against the sequences per iteration."""

    def delta(name: str, **labels) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    iterations = delta("rnnserve_batch_sequences_count")
    sequences = delta("rnnserve_batch_sequences_sum")
    trips = delta("rnnserve_stream_store_round_trips_total")
    reads = delta("rnnserve_stream_store_operations_total", op="read")
    writes = delta("rnnserve_stream_store_operations_total", op="write")
    out = {"iterations": iterations, "sequences_per_iteration": sequences / iterations if iterations else None}
    if trips:
        out.update({"store_round_trips": trips, "store_reads": reads, "store_writes": writes,
                    "round_trips_per_iteration": trips / iterations if iterations else None,
                    "operations_per_round_trip": (reads + writes) / trips})
    return out


async def resend_compare(grpc_url: str, model: str, features: int, streams: int, length: int, chunk: int) -> dict:
    """The same ``streams`` sequences, chunk by chunk: stateful (one chunk each time) vs stateless (the
    whole prefix each time, what a client without server-side state must send). Same answers."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((length, features)).astype(np.float32) for _ in range(streams)]
    out = {}
    async with grpc.aio.insecure_channel(grpc_url) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)

        async def stateful(k, s):
            answers = []
            for lo in range(0, length, chunk):
                r = await stub.ModelInfer(chunk_request(model, s[lo : lo + chunk], 10_000 + k, lo == 0,
                                                        lo + chunk >= length))
                answers.append(np.frombuffer(r.raw_output_contents[0], np.float32))
            return answers

        async def stateless(k, s):
            answers = []
            for lo in range(0, length, chunk):
                r = await stub.ModelInfer(chunk_request(model, s[: lo + chunk], None, False, False))
                answers.append(np.frombuffer(r.raw_output_contents[0], np.float32))
            return answers

        for name, fn in (("stateful", stateful), ("resend_prefix", stateless)):
            t0 = time.perf_counter()
            results = await asyncio.gather(*(fn(k, s) for k, s in enumerate(seqs)))
            elapsed = time.perf_counter() - t0
            chunks = sum(len(r) for r in results)
            out[name] = {"seconds": elapsed, "chunks_per_s": chunks / elapsed,
                         "timesteps_sent": int(sum(min(lo + chunk, length) - (lo if name == "stateful" else 0)
                                                   for lo in range(0, length, chunk)) * streams)}
            out[f"{name}_answers"] = results
    # per step, a chunk's answer is its own steps, the resent prefix's the whole prefix: compare the tail
    diff = max(float(np.abs(a - b[len(b) - len(a):]).max()) for ra, rb in zip(out.pop("stateful_answers"), out.pop(
        "resend_prefix_answers"), strict=True) for a, b in zip(ra, rb, strict=True))
    out["max_abs_difference"] = diff
    out["speedup"] = out["stateful"]["chunks_per_s"] / out["resend_prefix"]["chunks_per_s"]
    return out


def main(argv=None) -> int:
    server_default, client_default = default_cpus()
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--streams", default="100,1000", help="comma-separated stream counts")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between chunks of one stream")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0, help="streams start spread over this time")
    p.add_argument("--resend", action="store_true", help="compare streaming with resending the prefix")
    p.add_argument("--length", type=int, default=200, help="--resend: timesteps per sequence")
    p.add_argument("--chunk", type=int, default=10, help="--resend: timesteps per chunk")
    p.add_argument("--store", default="memory", help="comma-separated stream stores: memory, redis, cluster")
    p.add_argument("--cluster-replicas", type=int, default=1, help="--store cluster: replicas per primary")
    p.add_argument("--rate", type=float, help="chunks per second offered in all (sets each stream count's "
                   "interval to streams / rate; default: --interval)")
    p.add_argument("--repeat", type=int, default=1, help="runs per store and stream count, interleaved")
    p.add_argument("--server-cpus", default=server_default)
    p.add_argument("--client-cpus", default=client_default)
    p.add_argument("--baseline", help="checkout (git worktree) of an earlier commit whose own server runs beside "
                   "this one, interleaved (as rnnserve.bench.serving's z_baseline)")
    p.add_argument("--out", default="bench/results/streams.json")
    args = p.parse_args(argv)
    from rnnserve.bundle.manifest import load

    bundle = load(f"{args.model}:latest")
    if bundle.streaming is None:
        raise SystemExit(f"{args.model} cannot stream: {bundle.streaming_unavailable}")
    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    if args.resend:
        n = int(args.streams.split(",")[0])
        with ServerProcess(args.model, {"RNNSERVE_RUNTIME__INTRA_OP_THREADS": str(len(cpu_set(args.server_cpus)))},
                           cpus=args.server_cpus) as srv:
            result = asyncio.run(resend_compare(srv.grpc_url, args.model, bundle.num_features, n, args.length,
                                                args.chunk))
        print(json.dumps(result, indent=1))
        results = {"resend": result}
    else:
        results = {"streams": run_streams(args, args.model, bundle.num_features)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
