"""Serving benchmark (issue: serving). One command, one run, side by side on this machine:

  (a) this service: adaptive batching + length-aware planner
  (b) the same model with batching off (each request runs alone)
  (c) FIFO adaptive batching without length bucketing (one padded batch)
  (d) the in-process ONNX Runtime limit with the same bucketing (no server, no transport)
  (e) (a) with rnnserve metrics and drift monitoring off: their cost on the hot path

Closed loop: ``--concurrency`` clients each send one sequence per request over gRPC (the lightest
client, the same for every server) for ``--duration`` seconds after a warm-up. Lengths follow the
lognormal mix (median 50, max 500). Padding efficiency comes from the server's own counters.

    .venv/bin/rnnserve bench -- --duration 20 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.promtext import total
from loadtests.payloads import sequences
from service.launch import ServerProcess

CONFIGS = {
    "a_service": {},
    "b_no_batching": {"RNNSERVE_BATCHING__ENABLED": "false"},
    "c_fifo_no_bucketing": {"RNNSERVE_BATCHING__BUCKETING": "none"},
    "e_no_metrics_no_drift": {"RNNSERVE_METRICS__ENABLED": "false", "RNNSERVE_DRIFT__ENABLED": "false"},
    "f_metrics_no_drift": {"RNNSERVE_DRIFT__ENABLED": "false"},
    "s_spinning_on": {"RNNSERVE_RUNTIME__ALLOW_SPINNING": "true"},
}


def padded_length(t: int, shapes: str) -> int:
    """The time axis a client sends for a sequence of ``t`` steps: ``raw`` and ``raw+lengths`` send
    it as is; ``bucket:N`` pads up to a multiple of N; ``max:N`` pads every sequence to N."""
    kind, _, arg = shapes.partition(":")
    if kind in ("raw", "raw+lengths"):
        return t
    if kind == "bucket":
        return -(-t // int(arg)) * int(arg)
    if kind == "max":
        if t > int(arg):
            raise ValueError(f"sequence of {t} steps is longer than max:{arg}")
        return int(arg)
    raise ValueError(f"unknown shape policy {shapes!r}: raw, raw+lengths, bucket:N or max:N")


def infer_requests(model: str, seqs, shapes: str = "raw") -> list:
    """One v2 gRPC request per sequence. ``raw`` sends ``input`` [1, T, F] alone (rnnserve reads the
    length from the shape); every other policy zero-pads to ``padded_length`` and sends the true
    length as ``lengths`` [1, 1] INT64, which keeps the outputs identical to the unpadded ones."""
    from tritonclient.grpc import service_pb2 as pb

    requests = []
    for s in seqs:
        t, f = s.shape
        x = np.zeros((1, padded_length(t, shapes), f), np.float32)
        x[0, :t] = s
        req = pb.ModelInferRequest(model_name=model)
        req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape)))
        req.raw_input_contents.append(x.tobytes())
        if shapes != "raw":
            req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="lengths", datatype="INT64", shape=[1, 1]))
            req.raw_input_contents.append(np.array([[t]], np.int64).tobytes())
        req.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name="output"))
        requests.append(req)
    return requests


async def closed_loop(grpc_url: str, requests: list, concurrency: int, duration: float, warmup: float):
    """``concurrency`` clients, each sending the next request as soon as its last one is answered.
    Works against any Open Inference Protocol v2 gRPC server."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async with grpc.aio.insecure_channel(grpc_url, options=[("grpc.max_receive_message_length", 1 << 26)]) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)

        async def worker(k: int):
            nonlocal errors
            i = k
            while (now := time.perf_counter()) < stop_at:
                try:
                    await stub.ModelInfer(requests[i % len(requests)], timeout=30)
                    done = time.perf_counter()
                    if now >= measure_from:
                        latencies.append(done - now)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    lat = np.array(latencies)
    return {
        "throughput_seq_s": len(lat) / duration,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "requests": int(len(lat)),
        "errors": errors,
    }


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out = {kind: total(text, "rnnserve_timesteps_total", kind=kind) for kind in ("real", "computed")}
    for name in ("rnnserve_batch_sequences_sum", "rnnserve_batch_sequences_count"):
        out[name] = total(text, name)
    return out


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU of the server and all its workers (the load generator is not included)."""
    import psutil

    root = psutil.Process(pid)
    seconds = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            seconds += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def served(model: str, settings: dict, seqs, args) -> dict:
    with ServerProcess(model, {"RNNSERVE_BATCHING__MAX_BATCH_SIZE": str(args.max_batch), **settings}) as srv:
        before = scrape(srv.url)
        cpu_before = server_cpu_seconds(srv.proc.pid)
        result = asyncio.run(closed_loop(srv.grpc_url, infer_requests(model, seqs), args.concurrency, args.duration,
                                         args.warmup))
        cpu = server_cpu_seconds(srv.proc.pid) - cpu_before
        after = scrape(srv.url)
    # CPU over warm-up + measured window, per sequence answered in that window (warm-up included)
    result["server_cpu_us_per_seq"] = cpu / (result["requests"] * (args.duration + args.warmup) / args.duration) * 1e6
    real, computed = after["real"] - before["real"], after["computed"] - before["computed"]
    batches = after["rnnserve_batch_sequences_count"] - before["rnnserve_batch_sequences_count"]
    result["padding_efficiency"] = real / computed if computed else None  # None: metrics off
    result["mean_batch_sequences"] = (
        (after["rnnserve_batch_sequences_sum"] - before["rnnserve_batch_sequences_sum"]) / batches if batches else None
    )
    return result


def in_process_limit(model: str, seqs, args) -> dict:
    from export.bundle import load
    from models.data import pad
    from service.planner import padding_efficiency, plan
    from service.runtime import Runtime
    from service.settings import BatchingSettings

    bundle = load(f"{model}:latest")
    rt = Runtime(bundle.onnx_path)  # the serving defaults (spinning off)
    cost = rt.calibrate(bundle.num_features, args.max_batch)
    floor = BatchingSettings().min_bucket_efficiency
    lengths = np.array([len(s) for s in seqs])
    done, real, computed = 0, 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.duration:
        for lo in range(0, len(seqs) - args.max_batch + 1, args.max_batch):
            batch_len = lengths[lo : lo + args.max_batch]
            buckets = plan(batch_len, cost, args.max_batch, floor)
            for b in buckets:
                rt.run(*pad([seqs[lo + i] for i in b]))
            r, c = padding_efficiency(batch_len, buckets)
            real, computed, done = real + r, computed + c, done + len(batch_len)
    elapsed = time.perf_counter() - start
    return {"throughput_seq_s": done / elapsed, "p50_ms": None, "p99_ms": None,
            "padding_efficiency": real / computed, "mean_batch_sequences": args.max_batch}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rnnserve bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-batch", dest="max_batch", type=int, default=64)
    p.add_argument("--requests", type=int, default=2048, help="distinct sequences cycled through")
    p.add_argument("--configs", default="a_service,b_no_batching,c_fifo_no_bucketing,d_in_process_limit,"
                   "e_no_metrics_no_drift")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the configs this many times, interleaved; report the median of each")
    p.add_argument("--out", default="bench/results/serving.json")
    args = p.parse_args([a for a in (sys.argv[1:] if argv is None else argv) if a != "--"])
    from export.bundle import load

    seqs = sequences(args.requests, load(f"{args.model}:latest").num_features, "lognormal", seed=0)
    runs: dict[str, list[dict]] = {}
    for round_ in range(1, args.rounds + 1):
        for name in args.configs.split(","):
            print(f"round {round_}: running {name} ...", flush=True)
            if name == "d_in_process_limit":
                run = in_process_limit(args.model, seqs, args)
            else:
                run = served(args.model, CONFIGS[name], seqs, args)
            runs.setdefault(name, []).append(run)
            print(f"  {json.dumps(run)}", flush=True)
    results = {name: sorted(rs, key=lambda r: r["throughput_seq_s"])[len(rs) // 2] for name, rs in runs.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "runs": runs}, indent=1))
    print("\n| config | seq/s | p50 ms | p99 ms | padding efficiency | mean batch | server CPU µs/seq |\n"
          "|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = [f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in
                 ("throughput_seq_s", "p50_ms", "p99_ms", "padding_efficiency", "mean_batch_sequences",
                  "server_cpu_us_per_seq")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "a_service" in results and "b_no_batching" in results:
        ratio = results["a_service"]["throughput_seq_s"] / results["b_no_batching"]["throughput_seq_s"]
        print(f"\n(a)/(b) throughput: {ratio:.2f}x")
    if "a_service" in results and "e_no_metrics_no_drift" in results:
        ratio = results["a_service"]["throughput_seq_s"] / results["e_no_metrics_no_drift"]["throughput_seq_s"]
        print(f"(a)/(e) throughput, observability on/off: {ratio:.3f}")
        cpu = {k: sorted(r["server_cpu_us_per_seq"] for r in runs[k]) for k in ("a_service", "e_no_metrics_no_drift")}
        med = {k: v[len(v) // 2] for k, v in cpu.items()}
        print(f"server CPU per sequence, median: on {med['a_service']:.0f} us, off "
              f"{med['e_no_metrics_no_drift']:.0f} us: +{med['a_service'] / med['e_no_metrics_no_drift'] - 1:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
