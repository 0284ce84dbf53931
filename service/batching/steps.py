"""Continuous step-level batching (BatchMaker, EuroSys 2018; Orca, OSDI 2022) for models that can
stream: the scheduler keeps a set of active sequences, each with its carried recurrent state, and
runs them together in iterations of at most ``max_steps`` timesteps on the streaming graph. New
sequences (plain requests and stream chunks alike) join at the next iteration; a sequence that has
consumed all its steps leaves at once and is answered, so a short sequence never waits for the long
ones it was batched with.

A generation (``Work.gen``) is a row whose input is its prompt, then one token at a time: when it has
consumed its input, its last step's logits go to its ``Generation``, which samples the next token;
the token becomes the row's next input (its state stays in its slot) until a stop condition, when it
leaves like any finished sequence (Orca's iteration-level scheduling of decode steps).

Each iteration runs every active row for ``T`` steps (fewer for a row with fewer left; the graph's
``sequence_lens`` stops it exactly there, and the state it returns is the state after exactly that
many steps). ``T`` is chosen from the measured cost model to maximise useful timesteps per second:
for each candidate (the rows' remaining steps, capped at ``max_steps``) the predicted run time is
``fixed + overhead + T * (per_step + per_row_step * rows)`` against ``sum(min(remaining, T))`` useful
steps. A long T amortises the per-call cost; a T near the shortest remaining lets finished rows leave
without padding the others.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..runtime.cost import CostModel
from . import state as states
from .plan import Plan, Run, RunOutput, Work
from .policy import Policy

ITERATION_OVERHEAD_S = 150e-6  # Python per iteration besides the model run (gather rows, scatter states)


@dataclass(eq=False, slots=True)
class Active:
    work: Work
    done: int  # timesteps of work.data consumed
    first: bool = True  # not yet in an iteration (its queue wait is still to be observed)
    steps: list | None = None  # per-step models: the output rows of the iterations so far


def choose_steps(remaining: np.ndarray, cost: CostModel, max_steps: int, frame: int = 1) -> int:
    """The iteration length that maximises useful timesteps per predicted second. With ``frame`` > 1
    it is a whole number of frames (a row's state exists only at whole frames), rounded up so that a
    row with fewer steps left finishes in it."""
    rows = len(remaining)
    cap = max(frame, max_steps // frame * frame)
    candidates = np.unique(-(-np.minimum(remaining, cap) // frame) * frame)
    useful = np.minimum(remaining[None, :], candidates[:, None]).sum(axis=1)
    seconds = cost.fixed + ITERATION_OVERHEAD_S + candidates * (cost.per_step + cost.per_row_step * rows)
    return int(candidates[int(np.argmax(useful / seconds))])


class StepPolicy(Policy):
    """Active sequences occupy slots ``0..n-1`` of one ``[max_rows, H]`` matrix per state tensor, so an
    iteration's run feeds views of those matrices and ``update`` writes the returned states back in
    place; a finished sequence's slot is refilled by the last active one (no per-row stacking or
    copying per iteration)."""

    def __init__(self, state_sizes: tuple[int, ...], cost: CostModel, max_rows: int, max_steps: int,
                 frame: int = 1, per_step: bool = False) -> None:
        """``per_step``: the model answers every step, so a sequence's answer is its iterations' rows
        joined (the last iteration's row otherwise)."""
        self._per_step = per_step
        self._cost = cost
        self._max_rows = max_rows
        self._max_steps = max_steps
        self._frame = frame
        self._active: list[Active] = []
        self._states = tuple(np.zeros((max_rows, size), dtype=np.float32) for size in state_sizes)

    @property
    def pending(self) -> bool:
        return bool(self._active)

    def backlog(self) -> float:
        if not self._active:
            return 0.0
        left = sum(a.work.steps - a.done + (a.work.gen.remaining if a.work.gen else 0) for a in self._active)
        return self._cost.share(left, len(self._active))

    def schedule(self, queue: deque[Work], now: float) -> Plan:
        for i in range(len(self._active) - 1, -1, -1):  # callers that went away leave
            if self._active[i].work.future.done():
                self._free(i)
        taken = []
        while queue and len(self._active) < self._max_rows:
            w = queue.popleft()
            taken.append(w)
            if w.future.done():
                continue
            slot = len(self._active)
            for j, m in enumerate(self._states):
                m[slot] = 0.0 if w.state is None else w.state[j]
            self._active.append(Active(w, 0))
        active = self._active
        if not active:
            return Plan([], taken, [], now, continuous=True)
        n = len(active)
        done = np.fromiter((a.done for a in active), dtype=np.int64, count=n)
        remaining = np.fromiter((a.work.steps for a in active), dtype=np.int64, count=n) - done
        lengths = np.minimum(remaining, choose_steps(remaining, self._cost, self._max_steps, self._frame))
        started = [a.work for a in active if a.first]
        for a in active:
            a.first = False
        run = Run([a.work for a in active], lengths, done, tuple(m[:n] for m in self._states))
        decoding = sum(1 for a in active if a.work.gen is not None and a.work.gen.tokens)
        return Plan([run], taken, started, now, continuous=True, decoding=decoding)

    def update(self, run: Run, output: RunOutput) -> list[tuple[Work, np.ndarray]]:
        n = len(run.works)
        for m, new in zip(self._states, output.states, strict=True):
            m[:n] = new
        finished, slots = [], []
        for i, a in enumerate(self._active[:n]):  # the run's rows, in slot order
            taken = int(run.lengths[i])
            a.done += taken
            gen = a.work.gen
            if gen is not None:  # a generation: sample after its input, finish or feed the token back
                if a.done >= a.work.steps:
                    if gen.step(output.rows[i, taken - 1, : gen.vocab.size]):
                        finished.append((a.work, gen))
                        slots.append(i)
                    else:
                        a.work.data, a.done = gen.next_input, 0
                continue
            if self._per_step:
                a.steps = [*(a.steps or ()), output.rows[i, :taken]]
            if a.done >= a.work.steps:
                if a.work.stream:
                    a.work.final = states.row(self._states, i)
                answer = np.concatenate(a.steps) if self._per_step else output.rows[i]
                finished.append((a.work, answer))
                slots.append(i)
        for i in reversed(slots):
            self._free(i)
        return finished

    def abort(self) -> list[Work]:
        works = [a.work for a in self._active]
        self._active = []
        return works

    def _free(self, i: int) -> None:
        """Remove slot i: the last active sequence moves into it."""
        last = len(self._active) - 1
        if i != last:
            self._active[i] = self._active[last]
            for m in self._states:
                m[i] = m[last]
        self._active.pop()
