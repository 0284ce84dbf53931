"""What one GPU run measures and how long it may take: sizes, per-stage time limits, and the estimate
of the run's time and of the whole procedure's machine time (pure, so it is unit-tested).

``FULL`` is the run on the GPU machine; ``DRY`` the same stages at small sizes on CPU (the dry run
in CI). The per-stage costs below are guesses where no GPU figure exists yet (every one is named
``*_s``); the first GPU run's ``results.json`` records each stage's real time beside its estimate, so
the next plan can use those instead.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("parity", "inprocess", "streaming", "served")


@dataclass(frozen=True)
class Plan:
    batches: tuple[int, ...] = (1, 8, 64, 256, 1024)  # in-process batch sizes
    sequences: int = 2048  # lognormal mix (median 50, max 500), cycled through
    cell_s: float = 3.0  # measured time per (model, provider, batch size)
    warm_s: float = 1.0  # a cell's warm-up batch and its share of the calibration
    calibrate_rows: int = 64  # the cost model is measured at this many rows, once per model and provider
    stream_rows: tuple[int, ...] = (1, 8, 64, 256, 1024, 4096)
    stream_steps: tuple[int, ...] = (1, 16)  # steps per stream in one iteration
    stream_cell_s: float = 0.5  # per (model, steps, rows, variant)
    chunked_streams: int = 64  # the chunked-vs-whole check: streams in one mixed batch
    gate_s: float = 4.0  # the gate's cases + the chunked check, per model, on CUDA alone
    served_concurrency: tuple[int, ...] = (64, 256)
    served_duration_s: float = 8.0
    served_warmup_s: float = 2.0
    server_start_s: float = 20.0  # start to /readyz: bundle check, session, golden test, calibration, warm-up
    served_requests: int = 2048
    max_batch_size: int = 256  # the served batching limit, CUDA and CPU alike
    margin: float = 1.5  # a stage's limit is its estimate times this (plus grace_s) ...
    grace_s: float = 20.0
    budget_s: float = 330.0  # ... within the run's whole budget: 10 min of machine time less start, parts, install

    def limit(self, stage_estimate: float) -> float:
        return self.margin * stage_estimate + self.grace_s


FULL = Plan()
DRY = Plan(batches=(1, 8, 64), sequences=256, cell_s=0.3, warm_s=0.2, calibrate_rows=8, stream_rows=(1, 8, 64),
           stream_steps=(1, 4), stream_cell_s=0.05, chunked_streams=8, gate_s=1.0, served_concurrency=(8,),
           served_duration_s=1.5, served_warmup_s=0.5, server_start_s=10.0, served_requests=64, max_batch_size=16,
           margin=3.0, grace_s=30.0, budget_s=100.0)

PARTS = 4  # measured: what `make gpu-payload` makes (onnxruntime-gpu, the serving set, the project, both bundles)

# The procedure around the run, per machine start and per command (guesses until measured there).
MACHINE_START_S = 120.0
PART_COMMAND_S = 25.0  # one command carrying a 60 MiB part: the transfer, the check, the copy
INSTALL_S = 20.0  # unpacking the parts (about 390 MiB) and linking the CUDA libraries


def estimate(plan: Plan, models: int, providers: int, served: bool = True) -> dict[str, float]:
    """Seconds per stage of a run over ``models`` bundles on ``providers`` execution providers
    (CUDA and CPU: 2). The parity and streaming stages run on CUDA alone (streaming: two variants,
    plain and IO binding)."""
    inprocess = models * providers * (plan.warm_s * 2 + len(plan.batches) * (plan.cell_s + plan.warm_s))
    streaming = models * len(plan.stream_steps) * len(plan.stream_rows) * 2 * (plan.stream_cell_s * 1.2)
    run = {
        "parity": models * plan.gate_s,
        "inprocess": inprocess,
        "streaming": streaming,
        "served": (providers * (plan.server_start_s + len(plan.served_concurrency)
                                * (plan.served_duration_s + plan.served_warmup_s)) if served else 0.0),
    }
    return run


def stage_limit(plan: Plan, estimates: dict[str, float], stage: str, elapsed_s: float, budget_s: float) -> float:
    """A stage's limit when it starts ``elapsed_s`` into the run: its estimate with margin, but never
    into the estimates of the stages after it nor past the run's budget. Each stage running to its
    limit still ends the run within ``budget_s``; a stage before it that overran shortens it."""
    order = list(estimates)
    reserve = sum(estimates[s] for s in order[order.index(stage) + 1 :])
    return max(0.0, min(plan.limit(estimates[stage]), budget_s - elapsed_s - reserve))


def machine_time(run_s: float, parts: int) -> dict[str, float]:
    """The procedure's machine time: one start, one command per part (the last also installs and
    runs), each command's transfer; what a session's device time is charged."""
    total = MACHINE_START_S + parts * PART_COMMAND_S + INSTALL_S + run_s
    return {"start": MACHINE_START_S, "parts": parts * PART_COMMAND_S, "install": INSTALL_S, "run": run_s,
            "total": total}

