"""The batching scheduler: one asyncio loop per worker and model that every transport feeds.

Each *sequence* is one unit of work, so requests of any size share model runs. The loop sleeps until
work arrives (no polling), lets further arrivals join while that pays (``_gather``), hands the queue
to a ``Policy`` that chooses what the next iteration runs, runs it on a worker thread, and answers
each sequence as soon as its rows are computed (a short bucket is answered before the long ones of
the same batch finish). Batches grow with load; a lone request runs at once.

Decisions come from the length-aware cost model (``runtime.cost``): every queued sequence carries its
predicted share of model time, so the predicted wait of a newcomer is the cost of what is queued ahead
of it plus what is still running, corrected online by the ratio of measured to predicted iteration
times. A request whose predicted wait passes ``max_latency_ms`` is refused at once (503), and a
sequence that has still waited that long when it would start is answered 503 instead of running late.

Cancellation is a cancellation: a caller that goes away (client disconnect, timeout) cancels its
sequences' futures; queued ones are dropped before they run, running ones are discarded. ``close``
refuses new work, drains what was admitted and stops the loop.

A ``Policy`` owns how work becomes model runs: ``take`` (on the event loop, between iterations) moves
work from the queue into the next iteration, ``run`` (on the worker thread) executes one iteration and
delivers finished rows. They never overlap, so a policy needs no locks, and a policy may keep work
across iterations (``pending``): that is how a step-level engine with carried state plugs in."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rnnserve.bundle.batch import pad

from ..errors import ServingError, Unavailable
from ..runtime.cost import CostModel
from ..settings import BatchingSettings
from . import state as states
from .admission import AdmissionControl, Ticket
from .planner import padding_efficiency, plan

log = logging.getLogger("rnnserve.scheduler")

RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (x[B, T, F], lengths[B], states: one [B, H] per state tensor) -> (rows[B, ...], states after lengths[b] steps)
StatefulRunFn = Callable[[np.ndarray, np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, tuple[np.ndarray, ...]]]
GATHER_MIN_WAIT = 2e-4  # seconds: the shortest wait for a further arrival before an iteration
GATHER_BUSY_FRACTION = 0.5  # gathering goes on only while the event loop is at least this busy


@dataclass(eq=False, slots=True)
class Work:
    """One sequence waiting for its output row (and, for a stream chunk, the state after it)."""

    sequence: np.ndarray
    request: int
    enqueued: float
    future: asyncio.Future
    share: float  # predicted seconds of model time this sequence adds to the queue
    state: tuple[np.ndarray, ...] | None = None  # initial recurrent state ([H] per tensor); None: zeros
    carry: bool = False  # deliver (row, final state) instead of the row alone


@dataclass(frozen=True)
class IterationStats:
    sequences: int
    requests: int
    buckets: int  # model runs in the iteration
    real: int  # timesteps sent by clients
    computed: int  # timesteps computed after padding
    lengths: list[int]
    waits: list[float]  # seconds each sequence waited in the queue
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    rows: int = 0  # rows in the model runs (step engine: active sequences)
    steps: int = 0  # padded timesteps of the model run (step engine)
    model_cpu: float = 0.0  # CPU seconds of the thread that ran the model (ONNX Runtime's pool threads not in it)


Deliver = Callable[[Sequence[Work], "np.ndarray | BaseException"], None]


class Policy(ABC):
    """How queued work becomes model runs (see the module docstring)."""

    @abstractmethod
    def take(self, queue: deque[Work], now: float) -> list[Work]:
        """Move work from the head of ``queue`` into the next iteration; return what was taken."""

    @abstractmethod
    def run(self, deliver: Deliver) -> IterationStats:
        """Execute one iteration (worker thread). Every taken sequence is delivered exactly once,
        with its row or the exception that stopped it."""

    @property
    def pending(self) -> bool:
        """True while work taken earlier still needs iterations (none for whole-sequence batching)."""
        return False

    def backlog(self) -> float:
        """Predicted seconds of model time for the work it holds beyond the next iteration."""
        return 0.0


class BucketPolicy(Policy):
    """Whole-sequence batching: up to ``max_rows`` queued sequences per iteration, sorted by length
    and cut into buckets by the planner (``cost=None``: one FIFO bucket). ``per_request`` takes one
    request at a time (batching off: the benchmark baseline)."""

    def __init__(self, run: RunFn, num_features: int, cost: CostModel | None, max_rows: int,
                 min_efficiency: float, per_request: bool = False, run_stateful: StatefulRunFn | None = None,
                 state_sizes: tuple[int, ...] = ()) -> None:
        self._run = run
        self._run_stateful = run_stateful
        self._state_sizes = state_sizes
        self._features = num_features
        self._cost = cost
        self._max_rows = max_rows
        self._min_efficiency = min_efficiency
        self._per_request = per_request
        self._batch: list[Work] = []
        self._started = 0.0

    def take(self, queue: deque[Work], now: float) -> list[Work]:
        batch: list[Work] = []
        while queue and len(batch) < self._max_rows:
            if self._per_request and batch and queue[0].request != batch[0].request:
                break
            batch.append(queue.popleft())
        self._batch, self._started = batch, now
        return batch

    def run(self, deliver: Deliver) -> IterationStats:
        batch, self._batch = self._batch, []
        lengths = np.fromiter((w.sequence.shape[0] for w in batch), dtype=np.int64, count=len(batch))
        buckets = plan(lengths, self._cost, self._max_rows, self._min_efficiency)
        stages = {"pad": 0.0, "inference": 0.0, "unpad": 0.0}
        model_cpu = 0.0
        for n, bucket in enumerate(buckets):
            works = [batch[i] for i in bucket.tolist()]
            t0 = time.perf_counter()
            x, bucket_lengths = pad([w.sequence for w in works])
            t1, c1 = time.perf_counter(), time.thread_time()
            try:
                results = self._compute(works, x, bucket_lengths)
            except Exception as exc:  # reaches every caller of this bucket and of the ones not run
                deliver([batch[i] for b in buckets[n:] for i in b.tolist()], exc)
                break
            t2 = time.perf_counter()
            model_cpu += time.thread_time() - c1
            deliver(works, results)
            stages["pad"] += t1 - t0
            stages["inference"] += t2 - t1
            stages["unpad"] += time.perf_counter() - t2
        real, computed = padding_efficiency(lengths, buckets)
        stages["batch"] = time.perf_counter() - self._started
        return IterationStats(
            sequences=len(batch), requests=len({w.request for w in batch}), buckets=len(buckets),
            real=real, computed=computed, lengths=lengths.tolist(),
            waits=[self._started - w.enqueued for w in batch], stages=stages, model_cpu=model_cpu,
        )


    def _compute(self, works: list[Work], x: np.ndarray, lengths: np.ndarray):
        """Rows for plain sequences; (row, final state) for stream chunks (streaming graph)."""
        if self._run_stateful is None or not any(w.carry or w.state is not None for w in works):
            return self._run(x, lengths)
        rows, out = self._run_stateful(x, lengths, states.stack([w.state for w in works], self._state_sizes))
        return [(rows[i], states.row(out, i)) if w.carry else rows[i] for i, w in enumerate(works)]


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        settings: BatchingSettings,
        cost: CostModel | None,
        observe: Callable[[IterationStats], None] | None = None,
    ) -> None:
        self._policy = policy
        self._settings = settings
        self._cost = cost
        self._observe = observe
        self._max_latency = settings.max_latency_ms / 1000.0
        self.admission = AdmissionControl(settings.max_queue)
        self._queue: deque[Work] = deque()
        self._queued_cost = 0.0  # sum of the queued sequences' shares
        self._running_until = 0.0  # predicted end of the running iteration
        self._correction = 1.0  # measured / predicted iteration time, smoothed
        self._ids = itertools.count()
        self._mean_gap = 1.0  # seconds between arriving sequences, smoothed (gathering)
        self._last_arrival = 0.0
        self._arrival: asyncio.Future | None = None  # set by the next enqueue (gathering waits on it)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False

    # ---- admission and submission ---------------------------------------------------------------

    def reserve(self) -> Ticket:
        """One queue slot for a request that has just arrived (see ``admission``)."""
        return self.admission.reserve()

    def predicted_wait(self, now: float | None = None) -> float:
        """Seconds a sequence queued now is predicted to wait before it starts."""
        now = time.perf_counter() if now is None else now
        return max(0.0, self._running_until - now) + self._queued_cost * self._correction + self._policy.backlog()

    def _share(self, steps: int) -> float:
        if self._cost is None:
            return 0.0
        return self._cost.share(steps, self._settings.max_batch_size)

    async def infer(self, sequences: Sequence[np.ndarray], ticket: Ticket | None = None) -> np.ndarray:
        """Outputs for ``sequences``, one row each, in order. ``ticket`` is the request's slot from
        ``reserve`` (grown here to one slot per sequence; its owner releases it); without one the call
        takes and releases its own. Raises Overloaded when the queue is full and Unavailable when
        shut down or shed; a cancelled caller's sequences are dropped."""
        return np.stack(await self._submit(sequences, ticket))

    async def infer_stateful(self, sequence: np.ndarray, state: tuple[np.ndarray, ...] | None,
                             ticket: Ticket | None = None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One stream chunk from ``state`` (None: zeros): (output row, state after the chunk)."""
        (result,) = await self._submit([sequence], ticket, state=state, carry=True)
        return result

    async def _submit(self, sequences: Sequence[np.ndarray], ticket: Ticket | None,
                      state: tuple[np.ndarray, ...] | None = None, carry: bool = False) -> list:
        if self._closed and ticket is None:  # a ticket taken before close is still served (drain)
            raise Unavailable("server is shutting down")
        own = ticket is None
        if ticket is None:
            ticket = self.admission.reserve(0)
        try:
            ticket.resize(len(sequences))
            now = time.perf_counter()
            wait = self.predicted_wait(now)
            if wait > self._max_latency:
                raise Unavailable(
                    f"request shed: predicted queue wait {wait * 1e3:.0f} ms exceeds the "
                    f"{self._settings.max_latency_ms} ms latency limit; retry later"
                )
            loop = asyncio.get_running_loop()
            self._ensure_running()
            request = next(self._ids)
            works = [Work(s, request, now, loop.create_future(), self._share(s.shape[0]), state, carry)
                     for s in sequences]
            self._queue.extend(works)
            gap = (now - self._last_arrival) / len(works)
            self._last_arrival = now
            self._mean_gap += 0.1 * (min(gap, 1.0) - self._mean_gap)
            if self._arrival is not None and not self._arrival.done():
                self._arrival.set_result(None)
            self._queued_cost += sum(w.share for w in works)
            self._wakeup.set()
            try:
                if len(works) == 1:
                    return [await works[0].future]
                return list(await asyncio.gather(*(w.future for w in works)))
            except BaseException:
                for w in works:  # one failed or the caller went away: nothing more to compute for it
                    if not w.future.done():
                        w.future.cancel()
                    elif not w.future.cancelled():
                        w.future.exception()  # retrieved: the first error is the one raised
                raise
        finally:
            if own:
                ticket.release()

    # ---- the loop -------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="rnnserve-scheduler")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()

        def deliver(works: Sequence[Work], result) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(_resolve, works, result)

        while True:
            if not self._queue and not self._policy.pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            now = time.perf_counter()
            self._drop_stale(now)
            taken = self._policy.take(self._queue, now)
            self._queued_cost = max(0.0, self._queued_cost - sum(w.share for w in taken))
            if not self._queue:
                self._queued_cost = 0.0  # no drift from float rounding
            if not taken and not self._policy.pending:
                continue
            whole = not self._policy.pending  # whole-sequence iterations: predicted from the taken shares
            predicted = (sum(self._cost.share(w.sequence.shape[0], len(taken)) for w in taken)
                         if self._cost and whole else 0.0)
            self._running_until = now + predicted * self._correction
            try:
                stats = await asyncio.to_thread(self._policy.run, deliver)
            except Exception as exc:  # a policy bug: every caller still gets an answer
                log.exception("batch iteration failed")
                _resolve(taken, exc)
                continue
            finally:
                self._running_until = 0.0
            # a policy that keeps work across iterations answers it later; otherwise all is answered now
            lost = [] if self._policy.pending else [w for w in taken if not w.future.done()]
            if lost:
                log.error("policy left %d sequence(s) unanswered", len(lost))
                _resolve(lost, ServingError("internal error: a sequence was not answered"))
            actual = time.perf_counter() - now
            if predicted > 0 and stats.sequences:
                ratio = min(4.0, max(0.25, actual / predicted))
                self._correction += 0.2 * (ratio - self._correction)
            if self._observe is not None:
                try:
                    self._observe(stats)
                except Exception:  # metrics never break serving
                    log.exception("observing a batch failed")

    async def _gather(self) -> None:
        """Let arriving sequences join the next iteration before it starts, while that pays.

        Under load, many small runs cost more than one large one: each pays the per-call and
        per-step overhead again (the cost model's ``fixed`` and ``per_step``), and on a busy host
        that CPU is taken from decoding the next requests. So before an iteration starts, the
        scheduler waits for further arrivals, event-driven (no polling), and stops at the first of:
        the iteration is full; its oldest sequence has waited as long as a full iteration is
        predicted to take (at most a quarter of ``max_latency_ms``); the next arrival is not expected
        before that deadline (the smoothed gap between arrivals is longer: a lone request at low
        load starts at once); or the event loop was mostly idle while it waited, which means nothing
        else is being received or decoded (in a closed loop whose clients are all queued, waiting
        longer would only add latency)."""
        if self._cost is None or not self._settings.enabled or self._policy.pending:
            return
        rows = self._settings.max_batch_size
        mean_length = sum(w.sequence.shape[0] for w in self._queue) / len(self._queue)
        full = self._cost.share(int(mean_length), rows) * rows * self._correction
        deadline = self._queue[0].enqueued + min(full, self._max_latency / 4)
        while len(self._queue) < rows:
            now = time.perf_counter()
            remaining = deadline - now
            if remaining <= 0 or self._mean_gap > remaining:
                return
            busy_before = time.thread_time()  # this thread is the event loop's
            await self._next_arrival(min(remaining, max(GATHER_MIN_WAIT, self._mean_gap)))
            if time.thread_time() - busy_before < GATHER_BUSY_FRACTION * (time.perf_counter() - now):
                return

    async def _next_arrival(self, timeout: float) -> None:
        """Until the next sequence is queued or ``timeout`` passes (a future and a timer: no task)."""
        loop = asyncio.get_running_loop()
        self._arrival = arrival = loop.create_future()
        timer = loop.call_later(timeout, _set_none, arrival)
        try:
            await arrival
        finally:
            timer.cancel()
            self._arrival = None

    def _drop_stale(self, now: float) -> None:
        """Answer 503 to sequences that already waited past the latency limit; drop cancelled ones."""
        limit = self._max_latency
        if not self._queue or (now - self._queue[0].enqueued <= limit and not self._queue[0].future.done()):
            return
        kept: deque[Work] = deque()
        for w in self._queue:
            if w.future.done():
                self._queued_cost -= w.share
            elif now - w.enqueued > limit:
                self._queued_cost -= w.share
                w.future.set_exception(Unavailable(
                    f"request shed: queued {(now - w.enqueued) * 1e3:.0f} ms, past the "
                    f"{self._settings.max_latency_ms} ms latency limit; retry later"
                ))
            else:
                kept.append(w)
        self._queue = kept

    # ---- shutdown -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what was admitted (at most ``timeout`` seconds), stop the loop.
        Requests that hold a ticket taken before ``close`` (being read or decoded) are still served."""
        self.admission.close()
        try:
            await asyncio.wait_for(self.admission.wait_idle(), timeout)
        except TimeoutError:
            pass
        self._closed = True
        if self._task is None:
            return
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            _resolve(list(self._queue), Unavailable("server is shutting down"))
            self._queue.clear()


def _set_none(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _resolve(works: Sequence[Work], result) -> None:
    for i, w in enumerate(works):
        if w.future.done():  # cancelled by its caller, or already answered
            continue
        if isinstance(result, BaseException):
            w.future.set_exception(result)
        else:
            w.future.set_result(result[i])
