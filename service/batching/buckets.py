"""Whole-sequence batching (the default policy): up to ``max_rows`` queued sequences per iteration,
sorted by length and cut into buckets by the planner (``planner.plan``: the cost model's optimum under
a padding-efficiency floor; ``cost=None``: one FIFO bucket). ``per_request`` takes one request at a
time (batching off: the benchmark baseline). A bucket with stream chunks in it runs with its rows'
carried states (zeros for plain sequences), and every sequence finishes in the run it is in."""

from __future__ import annotations

from collections import deque

import numpy as np

from ..runtime.cost import CostModel
from . import state as states
from .plan import Plan, Run, RunOutput, Work
from .planner import plan
from .policy import Policy


class BucketPolicy(Policy):
    def __init__(self, cost: CostModel | None, max_rows: int, min_efficiency: float, per_request: bool = False,
                 state_sizes: tuple[int, ...] = ()) -> None:
        self._cost = cost
        self._max_rows = max_rows
        self._min_efficiency = min_efficiency
        self._per_request = per_request
        self._state_sizes = state_sizes  # the streaming graph's state tensors (none: the model cannot stream)
        self._batch: list[Work] = []

    def schedule(self, queue: deque[Work], now: float) -> Plan:
        batch: list[Work] = []
        while queue and len(batch) < self._max_rows:
            if self._per_request and batch and queue[0].request != batch[0].request:
                break
            batch.append(queue.popleft())
        self._batch = batch
        lengths = np.fromiter((w.steps for w in batch), dtype=np.int64, count=len(batch))
        runs = [self._run([batch[i] for i in bucket.tolist()], lengths[bucket])
                for bucket in plan(lengths, self._cost, self._max_rows, self._min_efficiency)]
        return Plan(runs, batch, batch, now)

    def _run(self, works: list[Work], lengths: np.ndarray) -> Run:
        carried = self._state_sizes and any(w.stream or w.state is not None for w in works)
        return Run(works, lengths, None, states.stack([w.state for w in works], self._state_sizes) if carried
                   else None)

    def update(self, run: Run, output: RunOutput) -> None:
        """Every row finishes (None: all of them)."""
        if output.states is not None:
            for i, w in enumerate(run.works):
                if w.stream:
                    w.final = states.row(output.states, i)
        return None

    def abort(self) -> list[Work]:
        batch, self._batch = self._batch, []
        return batch
