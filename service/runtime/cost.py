"""The batch cost model: what one model run of ``rows`` sequences padded to ``steps`` costs.

Measured at start-up on the serving session itself (``calibrate``) and used by the length-aware
planner (where to cut buckets) and the scheduler (predicted queue wait, shedding)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CostModel:
    """Predicted seconds for one run of ``rows`` sequences padded to ``steps``:
    ``fixed + steps * (per_step + per_row_step * rows)``."""

    fixed: float
    per_step: float
    per_row_step: float

    def cost(self, rows, steps):
        return self.fixed + steps * (self.per_step + self.per_row_step * rows)

    def share(self, steps: int, rows: int) -> float:
        """One sequence's share of a run with ``rows`` rows: its own row-steps plus its part of the
        per-call and per-step overhead."""
        return self.per_row_step * steps + (self.fixed + self.per_step * steps) / max(rows, 1)


def calibrate(run: RunFn, make_batch, max_rows: int, repeats: int = 5) -> CostModel:
    """Measure the three costs directly on batches from ``make_batch(rng, rows, steps)`` (the model's
    inputs: ``Signature.random_batch``), each the minimum over ``repeats`` runs: per call (1 row x 1
    step), per step (1 row, 256 vs 8 steps) and per row-step (``max_rows`` vs 1 row at 256 steps). A
    least-squares fit over a grid was tried first: on a 2-core host it sometimes returned zero
    per-call and per-step costs, which made the planner split every batch into single-length
    buckets (padding efficiency 1.0 at half the throughput)."""
    rng = np.random.default_rng(0)
    rows = max(2, max_rows)

    def best(r: int, steps: int) -> float:
        x, lengths = make_batch(rng, r, steps)
        run(x, lengths)  # warm this shape
        return min(_timed(run, x, lengths) for _ in range(repeats))

    call = best(1, 1)
    short, long_ = best(1, 8), best(1, 256)
    wide = best(rows, 256)
    per_step = max((long_ - short) / (256 - 8), 1e-9)
    per_row_step = max((wide - long_) / ((rows - 1) * 256), 1e-9)
    return CostModel(max(call, 1e-9), per_step, per_row_step)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
