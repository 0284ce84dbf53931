"""Generation benchmark: tokens per second and inter-token latency of decoding on the server, at
several concurrent generations, side by side in one run (interleaved per concurrency):

- ``generate``: Triton's generate endpoint, one JSON answer per generation (``--tokens`` each);
- ``generate_stream``: the same over server-sent events, one event per token;
- ``client``: the same decode driven by the client over the stream protocol (Triton's sequence
  parameters over gRPC ModelInfer): one round trip per token, the client sampling from the logits of
  each answer with the same rule (``service.generation.sampler``);
- ``in-process``: the decode loop limit: the same model, scheduler and step policy with the same
  settings, called in a process of its own on the server's CPUs, with no server and no transport.

The server (and the in-process run) is pinned to ``--server-cpus``, the client to ``--client-cpus``
(taskset / sched_setaffinity). Inter-token latency: the gaps between a generation's tokens where the
client sees them (``generate_stream``: events after the first; ``client``: round trips); for
``generate``, whose tokens the client sees at once, each generation's mean gap (its latency over its
tokens); in-process, the gaps between the times the tokens were sampled. Server CPU per 1,000 tokens
is the server's process tree's CPU over the cell (in-process: the child's). Served and in-process
cells run ``--repeat`` times, interleaved, the median reported (with every run's tokens/s); the
client-driven cell once per concurrency. The ratios: served ``generate`` tokens/s over the in-process
limit's (wall clock) and over the client-driven decode's, and the in-process CPU per token over the
server's (what the serving around the decode costs, whatever else shares the machine).

    .venv/bin/python -m rnnserve.bench.generation --model charlm --concurrency 1,16,64,256 --tokens 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rnnserve.bench.serving import cpu_set, default_cpus, server_cpu_seconds

PROMPT = "The "
PROMPT_USED = [PROMPT]  # --prompt


def server_settings(max_rows: int, tokens: int) -> dict[str, str]:
    return {"RNNSERVE_BATCHING__POLICY": "steps", "RNNSERVE_BATCHING__MAX_BATCH_SIZE": str(max_rows),
            "RNNSERVE_BATCHING__MAX_QUEUE": "8192", "RNNSERVE_BATCHING__MAX_LATENCY_MS": "600000",
            "RNNSERVE_LIMITS__MAX_TOKENS": str(max(tokens, 1024)), "RNNSERVE_DRIFT__ENABLED": "false"}


def summary(tokens: int, wall: float, gaps: list[float], cpu: float | None = None) -> dict:
    g = np.asarray(gaps) * 1e3 if gaps else np.zeros(1)
    out = {"tokens": tokens, "seconds": round(wall, 3), "tokens_s": round(tokens / wall, 1),
           "itl_p50_ms": round(float(np.percentile(g, 50)), 3), "itl_p99_ms": round(float(np.percentile(g, 99)), 3)}
    if cpu is not None:
        out["cpu_ms_per_1k_tokens"] = round(cpu / tokens * 1e6, 1)
    return out


def rounds_for(concurrency: int, minimum: int) -> int:
    return max(1, -(-minimum // concurrency))


# ---- served: generate and generate_stream ------------------------------------------------------------

def http_client(concurrency: int):
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(limits=limits, timeout=600)


async def served(client, url: str, model: str, concurrency: int, tokens: int, rounds: int, stream: bool) -> tuple:
    """``concurrency`` clients, ``rounds`` generations each, over ``client``'s connections."""
    gaps: list[float] = []
    counted = [0]

    async def one(k: int) -> None:
        for r in range(rounds):
            body = {"text_input": PROMPT_USED[0], "parameters": {"max_tokens": tokens, "seed": k * 100_003 + r}}
            t0 = time.perf_counter()
            if not stream:
                resp = await client.post(f"{url}/v2/models/{model}/generate", json=body)
                resp.raise_for_status()
                n = len(resp.json()["text_output"])
                counted[0] += n
                gaps.append((time.perf_counter() - t0) / max(n, 1))
                continue
            last = None
            async with client.stream("POST", f"{url}/v2/models/{model}/generate_stream", json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                    counted[0] += len(json.loads(line[6:]).get("text_output", ""))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(concurrency)))
    return counted[0], time.perf_counter() - t0, gaps


# ---- client-driven: one stream chunk per token --------------------------------------------------------

async def client_driven(grpc_url: str, model: str, vocab: list[str], concurrency: int, tokens: int,
                        rounds: int) -> tuple:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    from rnnserve.bench.streams import chunk_request
    from rnnserve.service.generation import sampler

    ids = {c: i for i, c in enumerate(vocab)}
    prompt = np.array([ids[c] for c in PROMPT_USED[0]], np.int64)
    gaps: list[float] = []
    counted = [0]
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one(k: int) -> None:
            for r in range(rounds):
                rng = sampler.generator(k * 100_003 + r)
                x, sid, last = prompt, f"g{k}-{r}-{os.getpid()}", None
                for t in range(tokens):
                    reply = await stub.ModelInfer(chunk_request(model, x, sid, t == 0, t == tokens - 1))
                    out = reply.outputs[0]
                    logits = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(tuple(out.shape))[0, -1]
                    x = np.array([sampler.sample(logits, rng, 1.0)], np.int64)
                    counted[0] += 1
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(concurrency)))
        return counted[0], time.perf_counter() - t0, gaps


# ---- in-process: the decode loop limit -------------------------------------------------------------------

def in_process(model: str, concurrencies: list[int], tokens: int, minimum: int, max_rows: int) -> dict:
    """Run in a process of its own (on the server's CPUs): the core with the server's settings."""
    os.environ.update(server_settings(max_rows, tokens))
    os.environ["RNNSERVE_MODEL__NAME"] = model
    from rnnserve.service.core import InferenceCore
    from rnnserve.service.generation.params import GenerateRequest, Sampling
    from rnnserve.service.settings import Settings

    core = InferenceCore.from_settings(Settings())
    core.prepare()

    async def main() -> dict:
        await core.warm_up()
        await core.generate(GenerateRequest(PROMPT_USED[0], Sampling(max_tokens=tokens, seed=1)))

        async def one(k: int, rounds: int) -> list:
            return [await core.generate(GenerateRequest(PROMPT_USED[0], Sampling(max_tokens=tokens,
                                                                                 seed=k * 100_003 + r)))
                    for r in range(rounds)]

        results = {}
        for c in concurrencies:
            rounds = rounds_for(c, minimum)

            cpu0, t0 = time.process_time(), time.perf_counter()
            done = [g for gens in await asyncio.gather(*(one(k, rounds) for k in range(c))) for g in gens]
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            gaps = [b - a for g in done for a, b in zip(g.times, g.times[1:], strict=False)]
            results[str(c)] = summary(sum(len(g.tokens) for g in done), wall, gaps, cpu)
        return results

    return asyncio.run(main())


def run_in_process(args, concurrency: int) -> dict:
    """One in-process cell in a child process pinned to the server's CPUs (started afresh per cell, so
    it runs right beside the served cells it is compared with)."""
    cmd = ["taskset", "-c", args.server_cpus, sys.executable, "-m", "rnnserve.bench.generation", "--in-process",
           "--model", args.model, "--concurrency", str(concurrency), "--tokens", str(args.tokens),
           "--min-generations", str(args.min_generations), "--max-rows", str(args.max_rows), "--prompt", args.prompt]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"in-process run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])[str(concurrency)]


def median_cell(cells: list[dict]) -> dict:
    """The repeat with the median tokens/s, with every repeat's tokens/s beside it."""
    ordered = sorted(cells, key=lambda cell: cell["tokens_s"])
    return {**ordered[len(ordered) // 2], "tokens_s_runs": [cell["tokens_s"] for cell in cells]}


# ---- the run ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="charlm")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--tokens", type=int, default=256, help="max_tokens of every generation")
    p.add_argument("--min-generations", type=int, default=64, help="generations per served / in-process cell")
    p.add_argument("--client-generations", type=int, default=16, help="generations per client-driven cell")
    p.add_argument("--repeat", type=int, default=3, help="served and in-process cells per concurrency (median)")
    p.add_argument("--max-rows", type=int, default=256, help="RNNSERVE_BATCHING__MAX_BATCH_SIZE (rows per iteration)")
    p.add_argument("--modes", default="generate,generate_stream,client")
    p.add_argument("--prompt", default=PROMPT, help="every generation's prompt (in the model's vocabulary)")
    p.add_argument("--server-cpus", help="default: the first half of this process's CPUs")
    p.add_argument("--client-cpus", help="default: the other half")
    p.add_argument("--keep-alive", action="store_true", help="served cells reuse warm connections (see "
                   "docs/BENCHMARKS.md: the server then spends more CPU per token)")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/generation.json")
    args = p.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    PROMPT_USED[0] = args.prompt
    if args.in_process:
        print(json.dumps(in_process(args.model, concurrencies, args.tokens, args.min_generations, args.max_rows)))
        return 0
    from rnnserve.bundle.manifest import load
    from rnnserve.harness.launch import ServerProcess

    if args.server_cpus is None or args.client_cpus is None:
        server_default, client_default = default_cpus()
        args.server_cpus, args.client_cpus = args.server_cpus or server_default, args.client_cpus or client_default

    vocab = list(load(f"{args.model}:latest").signature.labels)
    modes = args.modes.split(",")
    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    results: dict = {m: {} for m in [*modes, "in-process"]}
    served_modes = [m for m in modes if m != "client"]
    with ServerProcess(args.model, server_settings(args.max_rows, args.tokens), cpus=args.server_cpus) as srv:
        pid = srv.proc.pid
        asyncio.run(client_driven(srv.grpc_url, args.model, vocab, 4, 16, 1))  # warm the decode path

        def summarised(cpu0: float, measured: tuple) -> dict:
            n, wall, gaps = measured
            return summary(n, wall, gaps, server_cpu_seconds(pid) - cpu0)

        async def measured_cell(client, mode: str, c: int, rounds: int) -> dict:
            cpu0 = server_cpu_seconds(pid)
            return summarised(cpu0, await served(client, srv.url, args.model, c, args.tokens, rounds,
                                                 mode == "generate_stream"))

        async def side_by_side(c: int) -> dict:
            """The served and in-process cells of one concurrency, interleaved. Each served cell opens
            its connections inside its measured window, unless --keep-alive: then one set per repeat,
            opened (and used once) before its cells."""
            runs: dict = {m: [] for m in [*served_modes, "in-process"]}
            rounds = rounds_for(c, args.min_generations)
            for _ in range(args.repeat):
                if args.keep_alive:
                    async with http_client(c) as client:
                        await served(client, srv.url, args.model, c, 1, 1, False)
                        for mode in served_modes:
                            runs[mode].append(await measured_cell(client, mode, c, rounds))
                else:
                    for mode in served_modes:
                        async with http_client(c) as client:
                            runs[mode].append(await measured_cell(client, mode, c, rounds))
                runs["in-process"].append(await asyncio.to_thread(run_in_process, args, c))
            return runs

        for c in concurrencies:
            if "client" in modes:  # once: it is the slow one, its gap to the others is large
                cpu0 = server_cpu_seconds(pid)
                measured = asyncio.run(client_driven(srv.grpc_url, args.model, vocab, c, args.tokens,
                                                     rounds_for(c, args.client_generations)))
                results["client"][str(c)] = summarised(cpu0, measured)
                print(f"c={c} client: {results['client'][str(c)]}", flush=True)
            for mode, cells in asyncio.run(side_by_side(c)).items():
                results[mode][str(c)] = median_cell(cells)
                print(f"c={c} {mode}: {results[mode][str(c)]}", flush=True)
    ratios = {}
    for c in map(str, concurrencies):
        limit, gen = results["in-process"][c], results.get("generate", {}).get(c)
        if gen:
            cpu = limit["cpu_ms_per_1k_tokens"] / gen["cpu_ms_per_1k_tokens"]
            ratios[c] = {"generate_vs_in_process": round(gen["tokens_s"] / limit["tokens_s"], 3),
                         "generate_vs_in_process_cpu": round(cpu, 3)}
            if "client" in results and c in results["client"]:
                ratios[c]["generate_vs_client"] = round(gen["tokens_s"] / results["client"][c]["tokens_s"], 2)
    print(json.dumps(ratios, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
