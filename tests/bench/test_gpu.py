"""bench/gpu: the dry run of the whole GPU procedure passes (what CI keeps from rotting), the plan
fits the machine time it is given, results are written as the run goes, and failures are named."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from rnnserve.bench import gpu, gpu_plan
from rnnserve.bench.gpu_results import Results

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
def test_make_bench_gpu_dry_run_passes_and_prints_the_gpu_estimate():
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"}
    started = time.perf_counter()
    done = subprocess.run(["make", "bench-gpu", "DRY_RUN=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    print(f"make bench-gpu DRY_RUN=1: {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "[gpu] estimate of the GPU run:" in done.stdout
    assert "CUDA stages skipped" in done.stdout or "CUDAExecutionProvider" in done.stdout
    data = json.loads((ROOT / "build" / "gpu-dry" / "results" / "results.json").read_text())
    assert {name: part["status"] for name, part in data["stages"].items()} == dict.fromkeys(gpu_plan.STAGES, "done")
    parity = data["stages"]["parity"]["models"]
    assert len(parity) == 2 and all(r["passed"] and r["chunked"]["passed"] for m in parity.values() for r in m.values())
    assert all(c["seq_per_s"] for m in data["stages"]["inprocess"]["models"].values() for c in m["cells"])
    assert data["stages"]["served"]["cells"][0]["errors"] == 0
    assert "### parity" in (ROOT / "build" / "gpu-dry" / "results" / "results.md").read_text()


def test_the_gpu_run_and_the_procedure_fit_their_budgets():
    run = gpu_plan.estimate(gpu_plan.FULL, models=2, providers=2)
    assert set(run) == set(gpu_plan.STAGES)
    assert sum(run.values()) <= gpu_plan.FULL.budget_s
    assert gpu_plan.machine_time(gpu_plan.FULL.budget_s, gpu_plan.PARTS)["total"] <= 600  # 10 min, starts included
    dry = gpu_plan.estimate(gpu_plan.DRY, models=2, providers=1)
    assert sum(dry.values()) < 60


@pytest.mark.parametrize("overrun", [0.0, 1.0, 3.0])
def test_stages_that_run_to_their_limits_end_within_the_runs_budget(overrun):
    plan = gpu_plan.FULL
    run = gpu_plan.estimate(plan, models=2, providers=2)
    elapsed, limits = 0.0, {}
    for stage in run:
        limits[stage] = gpu_plan.stage_limit(plan, run, stage, elapsed, plan.budget_s)
        assert limits[stage] >= 0
        elapsed += limits[stage] + (overrun if limits[stage] else 0.0)  # a call may end a little past its limit
    assert elapsed <= plan.budget_s + len(run) * overrun
    assert limits["parity"] == plan.limit(run["parity"])  # room for the later stages' estimates: full limit
    if not overrun:  # stages that keep their limits leave the last one at least its estimate
        assert limits["served"] >= run["served"]


def test_results_are_written_as_the_run_goes_and_a_failing_stage_does_not_end_it(tmp_path):
    results = Results(tmp_path, {"device": "test"}, {"inprocess": lambda part: [f"cells: {len(part['cells'])}"]})
    with results.stage("inprocess", limit_s=30, estimate_s=1, grace_s=5):
        results.stage_data("inprocess")["cells"] = [{"batch": 1}]
        results.write()
        assert json.loads((tmp_path / "results.json").read_text())["stages"]["inprocess"]["status"] == "running"
    with results.stage("served", limit_s=30, estimate_s=1, grace_s=5):
        raise RuntimeError("server exited with 2")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["stages"]["inprocess"]["status"] == "done"
    assert data["stages"]["served"] == {**data["stages"]["served"], "status": "failed",
                                        "error": "RuntimeError: server exited with 2"}
    markdown = (tmp_path / "results.md").read_text()
    assert "### inprocess" in markdown and "cells: 1" in markdown and "server exited with 2" in markdown
    assert gpu.failures(data) == ["served: RuntimeError: server exited with 2"]


def test_failed_correctness_checks_are_named():
    data = {"stages": {"parity": {"status": "done", "models": {"m": {
        "cuda": {"passed": False, "chunked": {"passed": True}},
        "cpu": {"passed": True, "chunked": {"passed": False}}}}}}}
    assert gpu.failures(data) == ["parity: m on cuda: the gate's cases", "parity: m on cpu: chunked vs whole"]
