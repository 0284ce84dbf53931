"""GPU verification in one prepared run: CUDA against CPU for the models of ``make gpu-payload``.

Run on the GPU machine with its own ``python3`` (3.12) once the payload is installed (procedure:
docs/BENCHMARKS.md, "GPU"); torch-free (numpy, ONNX Runtime, the project's serving and bundle
modules, and for the served stage the BentoML set the payload carries). ``PYTHONSAFEPATH=1``: run
from the checkout's root, ``-m`` would otherwise put the checkout's own ``rnnserve/`` (which has no
``bench``) before the installed one.

    PYTHONSAFEPATH=1 PYTHONPATH=/tmp/rnnserve-gpu/site python3 -m rnnserve.bench.gpu \
        --home /tmp/rnnserve-gpu --out "$OUT/gpu"
    make bench-gpu DRY_RUN=1     # here: the whole procedure at small sizes on CPU (what CI runs)

It first prints ONNX Runtime's execution providers and stops with one line when CUDA cannot run a
session (``--dry-run`` goes on without it, on CPU). Then, each stage under its own time limit and
each measured cell written at once to ``--out`` (``results.json`` and ``results.md``):

1. ``parity``: the plain parity gate's cases on CUDA (mixed ``sequence_lens`` in one batch) against
   the float64 truth stored at export, and chunked streams against whole sequences (``gpu_checks``);
2. ``inprocess``: CUDA vs CPU at batch 1, 8, 64, 256 and 1,024 over the lognormal mix, the default
   model and a 512x2 LSTM (``gpu_timing``);
3. ``streaming``: the streaming graph's iteration time against rows on CUDA, plain and IO-bound;
4. ``served``: ``rnnserve serve`` on CUDA and on CPU at concurrency 64 and 256 (``gpu_served``).

Before the stages it prints its estimate of the run's time and of the procedure's machine time
(``gpu_plan``); ``results.json`` keeps each stage's time beside its estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import gpu_checks, gpu_plan, gpu_served, gpu_timing
from .gpu_results import Results

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def cuda_status(onnx_path: Path) -> tuple[bool, str]:
    """Whether ONNX Runtime runs a session on CUDA here, and how its CUDA libraries were found (or why
    not). onnxruntime-gpu lists CUDA even where the libraries or the device are missing, so a session
    is made: ``preload_dlls()`` first (it finds the ``nvidia`` packages beside onnxruntime, which the
    payload's install links), then, failing that, whatever ``import torch`` loads (same CUDA major)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA not in available:
        return False, f"onnxruntime {ort.__version__} offers only {', '.join(available)}"
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if _runs_on_cuda(ort, onnx_path):
        return True, "preload_dlls"
    try:
        import torch  # noqa: F401  (loads the CUDA libraries of its own build into this process)
    except ImportError:
        return False, NO_CUDA
    return (True, "the libraries torch loaded") if _runs_on_cuda(ort, onnx_path) else (False, NO_CUDA)


NO_CUDA = "a CUDA session falls back to CPU: no device, or the CUDA/cuDNN libraries were not found"


def _runs_on_cuda(ort, onnx_path: Path) -> bool:
    return ort.InferenceSession(str(onnx_path), providers=[CUDA, CPU]).get_providers()[0] == CUDA


def device_name() -> str:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "no GPU"
    except (OSError, IndexError, ValueError):
        return "no GPU"


def meta(args, ort_version: str, cuda: bool, how: str, estimate: dict, budget: float, machine: dict) -> dict:
    return {"device": device_name(), "dry_run": args.dry_run, "python": platform.python_version(),
            "onnxruntime": ort_version, "cuda": cuda, "cuda_libraries": how, "cpus": len(os.sched_getaffinity(0)),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([os.path.basename(sys.executable), "-m", "rnnserve.bench.gpu", *sys.argv[1:]]),
            "estimate_s": {k: round(v, 1) for k, v in estimate.items()},
            "budget_s": budget,
            "machine_time_estimate_s": {k: round(v) for k, v in machine.items()}}


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m rnnserve.bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, required=True, help="where the payload was installed (site/, models/)")
    p.add_argument("--out", type=Path, default=Path("results/gpu"))
    p.add_argument("--dry-run", action="store_true", help="small sizes; without CUDA, CPU alone (CI)")
    p.add_argument("--stages", default=",".join(gpu_plan.STAGES), help="a subset, comma-separated")
    p.add_argument("--models", help="a subset of the payload's models, by name, comma-separated")
    p.add_argument("--budget", type=float, help="seconds for the whole run (default: the plan's)")
    args = p.parse_args(argv)
    unknown = set(args.stages.split(",")) - set(gpu_plan.STAGES) - {""}
    if unknown:
        p.error(f"unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(gpu_plan.STAGES)}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    plan = gpu_plan.DRY if args.dry_run else gpu_plan.FULL
    index = json.loads((args.home / "models" / "models.json").read_text())
    if args.models:
        index["models"] = [m for m in index["models"] if m["name"] in args.models.split(",")]
    import onnxruntime as ort

    print(f"[gpu] onnxruntime {ort.__version__}, providers: {', '.join(ort.get_available_providers())}", flush=True)
    cuda, how = cuda_status(args.home / "models" / index["models"][0]["bundle"] / "model.onnx")
    if not cuda and not args.dry_run:
        print(f"[gpu] stopped: CUDA is not available: {how}", flush=True)
        return 3
    if not cuda:
        print(f"[gpu] dry run without CUDA ({how}); CUDA stages skipped, CPU at small sizes", flush=True)
    stages = [s for s in args.stages.split(",") if s]
    gpu_estimate = gpu_plan.estimate(gpu_plan.FULL, len(index["models"]), 2)
    parts = _parts(args.home, args.dry_run)
    machine = gpu_plan.machine_time(sum(gpu_estimate.values()), parts)
    here = gpu_plan.estimate(plan, len(index["models"]), 2 if cuda else 1)
    here = {s: here[s] for s in stages}
    budget = args.budget or plan.budget_s
    print(f"[gpu] estimate of the GPU run: {_seconds(gpu_estimate)}; the procedure's machine time with {parts} "
          f"part(s): ~{machine['total'] / 60:.1f} min (start {machine['start']:.0f} s, parts {machine['parts']:.0f} s, "
          f"install {machine['install']:.0f} s, run {machine['run']:.0f} s)", flush=True)
    results = Results(args.out, meta(args, ort.__version__, cuda, how, here, budget, machine),
                      {"parity": gpu_checks.render, "inprocess": gpu_timing.render_inprocess,
                       "streaming": gpu_timing.render_streaming, "served": gpu_served.render})
    providers = ["cuda", "cpu"] if cuda else ["cpu"]
    started = time.perf_counter()
    for stage in stages:
        limit = gpu_plan.stage_limit(plan, here, stage, time.perf_counter() - started, budget)
        with results.stage(stage, limit, here[stage], plan.grace_s) as deadline:
            STAGES[stage](args.home, index, providers, plan, deadline, results)
    print(f"[gpu] done in {time.perf_counter() - started:.0f} s; results in {args.out}/results.json and "
          f"results.md", flush=True)
    failed = failures(results.data)
    for line in failed:
        print(f"[gpu] FAILED: {line}", flush=True)
    return 1 if failed else 0


def failures(data: dict) -> list[str]:
    """Stages that broke off with an error, and correctness checks that did not pass."""
    stages = data["stages"]
    out = [f"{name}: {part.get('error', '')}" for name, part in stages.items() if part.get("status") == "failed"]
    for model, per_provider in stages.get("parity", {}).get("models", {}).items():
        for provider, r in per_provider.items():
            if not r.get("passed", True):
                out.append(f"parity: {model} on {provider}: the gate's cases")
            if not r.get("chunked", {}).get("passed", True):
                out.append(f"parity: {model} on {provider}: chunked vs whole")
    return out


STAGES = {"parity": gpu_checks.run, "inprocess": gpu_timing.run_inprocess, "streaming": gpu_timing.run_streaming,
          "served": gpu_served.run}


def _parts(home: Path, dry_run: bool) -> int:
    """The payload's parts: as received here, or for a dry run those of ``make gpu-payload`` (measured)."""
    manifest = home / "parts" / "payload.json"
    if dry_run or not manifest.is_file():
        return gpu_plan.PARTS
    return len(json.loads(manifest.read_text())["parts"])


def _seconds(per_stage: dict) -> str:
    return ", ".join(f"{k} {v:.0f} s" for k, v in per_stage.items()) + f"; total {sum(per_stage.values()):.0f} s"


if __name__ == "__main__":
    raise SystemExit(main())
