"""The batching policy interface: how queued work becomes model runs (vLLM's scheduler interface:
``schedule`` returns a plan, ``update`` takes the results; a policy decides and never calls the model).

The scheduler calls ``schedule`` on the event loop between iterations; the executor runs the plan's
runs on the worker thread and hands each run's output to ``update`` there, run by run, so a short
bucket is answered before the long ones of its iteration finish. ``schedule`` and ``update`` never
overlap (an iteration's runs are updated before the next plan is made), so a policy needs no locks.
A policy may keep work across iterations (``pending``): the step policy carries active rows.

Policies: ``buckets.BucketPolicy`` (whole sequences, length buckets) and ``steps.StepPolicy``
(continuous step-level batching); ``policies.make_policy`` maps the setting to one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from .plan import Plan, Run, RunOutput, Work


class Policy(ABC):
    @abstractmethod
    def schedule(self, queue: deque[Work], now: float) -> Plan:
        """Move work from the head of ``queue`` into the next iteration; return its plan (no runs:
        nothing to do)."""

    @abstractmethod
    def update(self, run: Run, output: RunOutput) -> list[tuple[Work, np.ndarray]] | None:
        """Take one run's output back; return the work that finished with its answer (None: every row
        of ``run``, answered with ``output.rows``), after setting ``final`` on finished stream chunks."""

    @abstractmethod
    def abort(self) -> list[Work]:
        """A run failed: the work that fails with it (dropped from the policy)."""

    @property
    def pending(self) -> bool:
        """True while work taken earlier still needs iterations (none for whole-sequence batching)."""
        return False

    def backlog(self) -> float:
        """Predicted seconds of model time for the work it holds beyond the next iteration."""
        return 0.0
