"""Soak: mixed load for ``--duration`` seconds (default 600) against a real server, sampling the
server's RSS and open file descriptors (all its processes) and the drift window, every 10 s.

    .venv/bin/python -m rnnserve.bench.soak --model vowels --duration 600

Mixed load: HTTP JSON, v2 HTTP and gRPC clients, 1-8 sequences per request, lognormal lengths,
plus a stream of invalid requests (about 5%) and short-timeout clients that give up (about 2%).
Passes when RSS and fds are flat (last-quarter median within 10% / +8 of the second-quarter
median), no request was lost (every request got a response or a clean error) and the drift window
never exceeded its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from rnnserve.bundle.batch import pad
from rnnserve.harness import promtext
from rnnserve.harness.launch import ServerProcess
from rnnserve.loadtests.payloads import sequences


def footprint(pid: int) -> tuple[float, int]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = sum(p.memory_info().rss for p in procs) / 2**20
    fds = sum(p.num_fds() for p in procs)
    return rss, fds


async def soak(server, model, seqs, duration, concurrency, samples):
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    counts = {"ok": 0, "client_error": 0, "shed": 0, "timeout": 0, "lost": 0}
    rng = np.random.default_rng(0)
    stop_at = time.time() + duration

    async def sampler():
        while time.time() < stop_at:
            rss, fds = footprint(server.proc.pid)
            text = httpx.get(server.url + "/metrics", timeout=10).text
            window = promtext.samples(text, "rnnserve_drift_window_sequences")
            samples.append({"t": round(time.time() - (stop_at - duration), 1), "rss_mib": round(rss, 1),
                            "fds": fds, "drift_window": window[0][1] if window else None})
            await asyncio.sleep(10)

    async def http_client(client, k):
        while time.time() < stop_at:
            n = int(rng.integers(1, 9))
            batch = [seqs[i] for i in rng.integers(0, len(seqs), n)]
            roll = rng.random()
            try:
                if roll < 0.05:
                    r = await client.post("/predict", content=b'{"sequences": [[[NaN]]]}',
                                          headers={"content-type": "application/json"})
                elif roll < 0.07:
                    await client.post("/predict", json={"sequences": [s.tolist() for s in batch]}, timeout=0.01)
                    counts["ok"] += 1
                    continue
                elif k % 2:
                    r = await client.post("/predict", json={"sequences": [s.tolist() for s in batch]})
                else:
                    x, lengths = pad(batch)
                    r = await client.post(f"/v2/models/{model}/infer", json={"inputs": [
                        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
                        {"name": "lengths", "datatype": "INT64", "shape": [n], "data": lengths.tolist()}]})
            except httpx.TimeoutException:
                counts["timeout"] += 1
                continue
            except httpx.HTTPError:
                counts["lost"] += 1
                continue
            key = "ok" if r.status_code == 200 else "shed" if r.status_code in (429, 503) else "client_error"
            counts[key] += 1

    async def grpc_client(stub):
        while time.time() < stop_at:
            s = seqs[int(rng.integers(0, len(seqs)))]
            req = pb.ModelInferRequest(model_name=model)
            req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                                    shape=[1, *s.shape]))
            req.raw_input_contents.append(s.tobytes())
            try:
                await stub.ModelInfer(req, timeout=30)
                counts["ok"] += 1
            except grpc.aio.AioRpcError as e:
                counts["shed" if e.code() == grpc.StatusCode.UNAVAILABLE else "lost"] += 1

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client, \
            grpc.aio.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tasks = [http_client(client, k) for k in range(concurrency // 2)]
        tasks += [grpc_client(stub) for _ in range(concurrency - concurrency // 2)]
        await asyncio.gather(sampler(), *tasks)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", default="bench/results/soak.json")
    args = p.parse_args(argv)
    samples: list[dict] = []
    with ServerProcess(args.model, {"RNNSERVE_DRIFT__INTERVAL_S": "5"}) as server:
        features = httpx.get(f"{server.url}/v2/models/{args.model}").json()["inputs"][0]["shape"][2]
        seqs = sequences(1024, int(features), "lognormal", seed=0)
        counts = asyncio.run(soak(server, args.model, seqs, args.duration, args.concurrency, samples))
        window_bound = 200
    q = len(samples) // 4
    early, late = samples[q : 2 * q] or samples, samples[-q:] or samples
    med = lambda rows, k: float(np.median([r[k] for r in rows]))  # noqa: E731
    verdict = {
        "rss_mib_early": med(early, "rss_mib"), "rss_mib_late": med(late, "rss_mib"),
        "fds_early": med(early, "fds"), "fds_late": med(late, "fds"),
        "max_drift_window": max((r["drift_window"] or 0) for r in samples),
    }
    verdict["rss_flat"] = verdict["rss_mib_late"] <= 1.10 * verdict["rss_mib_early"]
    verdict["fds_flat"] = verdict["fds_late"] <= verdict["fds_early"] + 8
    verdict["drift_bounded"] = verdict["max_drift_window"] <= window_bound
    verdict["lost"] = counts["lost"]
    passed = verdict["rss_flat"] and verdict["fds_flat"] and verdict["drift_bounded"] and counts["lost"] == 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "counts": counts, "verdict": verdict,
                                          "passed": passed, "samples": samples}, indent=1))
    print(json.dumps({"counts": counts, "verdict": verdict, "passed": passed}, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
