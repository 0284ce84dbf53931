"""Where the serving worker's CPU goes under load: py-spy samples the loaded worker while the serving
benchmark's closed-loop client drives it, and the samples are summed into the parts of the hot path.

Same placement as ``rnnserve.bench.serving`` (server on ``--server-cpus``, client on ``--client-cpus``,
one sequence per request, lognormal lengths, concurrency 64). Each sample is charged to the first part
found walking its stack from the innermost frame out (``PARTS``); shares are of the non-idle samples
of all the worker's threads. py-spy sees Python frames only: C and Cython code is charged to the
Python frame that called it (grpc.aio's Cython callbacks to the asyncio loop that runs them, its
poller to a bare thread). py-spy is in the ``dev`` extra.

    .venv/bin/python -m rnnserve.bench.profile --transport http_json --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from rnnserve.bench.serving import CONFIGS, cpu_set, default_cpus, model_sequences, start_load
from rnnserve.bundle.manifest import load as load_bundle
from rnnserve.harness.launch import ServerProcess

# (part, substrings of a frame "function (file:line)"), tried per frame from the innermost out.
PARTS = [
    ("model (ONNX Runtime Session.run)", ("onnxruntime/capi", "(service/runtime/onnx.py")),
    ("prometheus writes", ("prometheus_client/",)),
    ("gRPC (grpc's Python code: the thread-pool server, grpc.aio)",
     ("grpc/_server", "grpc/_common", "grpc/_utilities", "grpc/_cython", "grpc/aio", "cygrpc")),
    ("HTTP parsing (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("BentoML middleware", ("bentoml/", "_bentoml_impl", "_bentoml_sdk", "opentelemetry")),
    ("Starlette request/response", ("starlette/",)),
    ("wire codec + validation", ("(service/codecs/", "orjson", "json/", "google/protobuf", "tritonclient")),
    ("batching (scheduler, planner, padding)", ("(service/batching/",)),
    ("core, registry, transports", ("(service/",)),
    ("numpy", ("numpy/",)),
    ("asyncio loop, socket I/O and the C callbacks it runs (grpc.aio's)", ("asyncio/", "selectors", "socket")),
    ("threads in C code (grpc's pool and poller) or waiting (executor)", ("threading", "concurrent/")),
]
OTHER = "other"
# Charged before PARTS, wherever it is on the stack: the model's thread handing answers to the event
# loop. Its innermost frames are asyncio's self-pipe write, but the thread is not the loop: it made the
# write syscall, and its samples there are mostly the wait to take the GIL back from the loop thread.
HANDOFF = "answers handed to the loop from the model's thread (self-pipe write, then the wait for the GIL)"
HANDOFF_FRAME = "call_soon_threadsafe"


def part_of(stack: str) -> str:
    if HANDOFF_FRAME in stack:
        return HANDOFF
    for frame in reversed(stack.split(";")):
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return OTHER


def summarise(raw: str) -> dict[str, float]:
    """Collapsed py-spy stacks (``-f raw``: ``frame;frame;... count`` per line) -> share per part."""
    counts: Counter = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[part_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {part: counts[part] / total for part in [*(part for part, _ in PARTS), HANDOFF, OTHER] if counts[part]}


def main(argv=None) -> int:
    server_default, client_default = default_cpus()
    p = argparse.ArgumentParser(prog="rnnserve.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--transport", choices=["grpc", "grpc_stream", "http_v2", "http_json"], default="grpc")
    p.add_argument("--config", choices=sorted(CONFIGS), default="a_service")
    p.add_argument("--duration", type=float, default=8.0, help="seconds sampled")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=2048)
    p.add_argument("--server-cpus", default=server_default)
    p.add_argument("--client-cpus", default=client_default)
    p.add_argument("--raw", help="also keep py-spy's collapsed stacks here")
    p.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL: the "
                   "Python part of the CPU, without GIL waits and without the model's C++ run")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: it is in the dev extra (pip install -e '.[dev]')")
    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    seqs = model_sequences(load_bundle(f"{args.model}:latest"), args.requests)
    settings = {"RNNSERVE_RUNTIME__INTRA_OP_THREADS": str(len(cpu_set(args.server_cpus))), **CONFIGS[args.config]}
    with ServerProcess(args.model, settings, cpus=args.server_cpus) as srv, \
            tempfile.NamedTemporaryFile(suffix=".txt") as out:
        worker = max(srv.workers(), key=lambda w: w.memory_info().rss)  # the one holding the model
        load = start_load(srv, args.model, seqs, args.transport, args.concurrency, args.duration + 1, args.warmup)

        def record() -> None:
            time.sleep(args.warmup)
            subprocess.run([spy, "record", "-p", str(worker.pid), "-d", str(int(args.duration)), "-r", str(args.rate),
                            "-f", "raw", "-o", out.name, "--nonblocking", *(["--gil"] if args.gil else [])],
                           check=True, capture_output=True)

        sampler = threading.Thread(target=record, daemon=True)
        sampler.start()
        result = asyncio.run(load)
        sampler.join()
        raw = Path(out.name).read_text()
    if args.raw:
        Path(args.raw).write_text(raw)
    shares = summarise(raw)
    print(json.dumps({"transport": args.transport, "config": args.config,
                      "throughput_seq_s": result["throughput_seq_s"],
                      "shares": {k: round(v, 3) for k, v in shares.items()}}, indent=1))
    for part, share in shares.items():
        print(f"| {part} | {share:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
