"""One adaptive batching queue per worker, fed by every transport.

Built on BentoML's adaptive batching dispatcher (``CorkDispatcher``: it learns the batch cost
online, waits only as long as batching pays, runs one batch at a time and sheds a request whose
predicted latency passes ``max_latency_ms``). Each *sequence* is one job, so requests of any size
share batches. Inside a batch the length-aware planner sorts by length and cuts buckets; each
bucket is padded, run, and scattered back, so every job gets exactly its own row.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from models.data import pad

from .errors import Overloaded, Unavailable
from .planner import padding_efficiency, plan
from .runtime import CostModel
from .settings import BatchingSettings

RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Admission:
    """Queue slots held by one request: one while it is read and decoded, then one per sequence
    until it is answered. A context manager, so every exit path (error, cancellation) frees them."""

    __slots__ = ("_batcher", "held")

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self.held = 0

    def resize(self, n: int) -> None:
        b = self._batcher
        extra = n - self.held
        if extra > 0 and b._admitted + extra > b._settings.max_queue:
            raise b._overloaded()
        b._admitted += extra
        self.held = n

    def release(self) -> None:
        self._batcher._admitted -= self.held
        self.held = 0

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class Job:
    request: int
    sequence: np.ndarray
    enqueued: float


class Batcher:
    def __init__(
        self,
        run: RunFn,
        settings: BatchingSettings,
        cost: CostModel | None,
        observe: Callable[..., None] | None = None,
    ) -> None:
        self._run = run
        self._settings = settings
        self._cost = cost if settings.bucketing == "cost" else None
        self._observe = observe
        self._admitted = 0
        self._ids = itertools.count()
        self._submit = None  # created on first use, inside the serving event loop
        self._serial: asyncio.Semaphore | None = None
        self._closed = False

    @property
    def admitted(self) -> int:
        return self._admitted

    def reserve(self) -> Admission:
        """Hold one queue slot for a request that has just arrived, before its body is read.

        Counting arriving requests (not only decoded sequences) is what makes refusal fast under a
        burst: once the queue is spoken for, the next request is refused before its upload and
        decoding, which would otherwise stall the event loop for the requests already admitted."""
        if self._closed:
            raise Unavailable("server is shutting down")
        admission = Admission(self)
        admission.resize(1)
        return admission

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"server at capacity ({self._admitted} sequences queued, limit "
            f"{self._settings.max_queue}); retry later"
        )

    def _dispatcher(self):
        if self._submit is None:
            from bentoml._internal.marshal.dispatcher import CorkDispatcher

            dispatcher = CorkDispatcher(
                max_latency_in_ms=self._settings.max_latency_ms,
                max_batch_size=self._settings.max_batch_size,
                fallback=self._shed,
                get_batch_size=lambda _job: 1,
            )
            self._submit = dispatcher(self.run_batch)
        return self._submit

    def _shed(self):
        raise Unavailable(
            f"request shed: queued past the {self._settings.max_latency_ms} ms latency limit"
        )

    def close(self) -> None:
        self._closed = True

    async def infer(self, sequences: Sequence[np.ndarray], admission: Admission | None = None) -> np.ndarray:
        """Outputs for ``sequences``, one row each, in order. ``admission`` is the request's slot
        from ``reserve`` (grown here to one slot per sequence; its owner releases it); without
        one, the call takes and releases its own. Raises Overloaded when the admission queue is
        full and Unavailable when shut down or shed."""
        if self._closed:
            raise Unavailable("server is shutting down")
        own = admission is None
        if admission is None:
            admission = Admission(self)
        try:
            admission.resize(len(sequences))
            request = next(self._ids)
            now = time.perf_counter()
            jobs = [Job(request, s, now) for s in sequences]
            if not self._settings.enabled:
                # Batching off (benchmark baseline): each request runs alone, one at a time.
                if self._serial is None:
                    self._serial = asyncio.Semaphore(1)
                async with self._serial:
                    rows = await run_in_threadpool(self.run_batch, jobs)
            else:
                submit = self._dispatcher()
                rows = await asyncio.gather(*(submit(job) for job in jobs))
            return np.stack(rows)
        finally:
            if own:
                admission.release()

    def run_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """Plan, pad, run, unpad. Returns one output row per job, in job order."""
        started = time.perf_counter()
        lengths = np.fromiter((len(j.sequence) for j in jobs), dtype=np.int64, count=len(jobs))
        buckets = plan(lengths, self._cost, self._settings.max_batch_size, self._settings.min_bucket_efficiency)
        out: list[np.ndarray | None] = [None] * len(jobs)
        pad_s = infer_s = 0.0
        for bucket in buckets:
            t0 = time.perf_counter()
            x, bucket_lengths = pad([jobs[i].sequence for i in bucket])
            t1 = time.perf_counter()
            y = self._run(x, bucket_lengths)
            infer_s += time.perf_counter() - t1
            pad_s += t1 - t0
            for i, row in zip(bucket.tolist(), y, strict=True):
                out[i] = row
        if self._observe is not None:
            real, computed = padding_efficiency(lengths, buckets)
            self._observe(
                sequences=len(jobs),
                requests=len({j.request for j in jobs}),
                buckets=len(buckets),
                real=real,
                computed=computed,
                lengths=lengths.tolist(),
                waits=[started - j.enqueued for j in jobs],
                stages={"pad": pad_s, "inference": infer_s,
                        "batch": time.perf_counter() - started},
            )
        assert all(row is not None for row in out), "planner lost a sequence"
        return out  # type: ignore[return-value]
