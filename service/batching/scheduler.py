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

Each iteration is plan, execute, update (vLLM's engine step): the ``Policy`` (``policy``) makes the
iteration's plan on the event loop, the ``Executor`` (``executor``) runs its model runs one by one on
the worker thread, and after each run the policy takes the output back and says which work finished,
which is answered at once (one hand-off to the event loop per run). The scheduler owns the queue,
admission, prediction of waits, shedding and the loop; it neither plans nor calls the model."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ServingError, Unavailable
from ..runtime.cost import CostModel
from ..settings import BatchingSettings
from .admission import AdmissionControl, Ticket
from .executor import Executor
from .plan import IterationStats, Plan, Work
from .policy import Policy
from .state import State

if TYPE_CHECKING:
    from ..generation.decode import Generation

log = logging.getLogger("rnnserve.scheduler")

GATHER_MIN_WAIT = 2e-4  # seconds: the shortest wait for a further arrival before an iteration
GATHER_BUSY_FRACTION = 0.5  # gathering goes on only while the event loop is at least this busy
Deliver = Callable[[Sequence[Work], "np.ndarray | BaseException"], None]


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        executor: Executor,
        settings: BatchingSettings,
        cost: CostModel | None,
        observe: Callable[[IterationStats], None] | None = None,
    ) -> None:
        self._policy = policy
        self._executor = executor
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

    async def infer(self, sequences: Sequence[np.ndarray], ticket: Ticket | None = None) -> list[np.ndarray]:
        """Packed output rows for ``sequences``, one each, in order (each a row of its own model run:
        per step, padded to that run's length). ``ticket`` is the request's slot from ``reserve``
        (grown here to one slot per sequence; its owner releases it); without one the call takes and
        releases its own. Raises Overloaded when the queue is full and Unavailable when shut down or
        shed; a cancelled caller's sequences are dropped."""
        works = await self._submit(sequences, ticket)
        return [w.future.result() for w in works]

    async def infer_stateful(self, sequence: np.ndarray, state: State | None,
                             ticket: Ticket | None = None) -> tuple[np.ndarray, State]:
        """One stream chunk from ``state`` (None: zeros): (output row, state after the chunk)."""
        (work,) = await self._submit([sequence], ticket, state=state, stream=True)
        return work.future.result(), work.final

    async def generate(self, prompt: np.ndarray, gen: Generation, ticket: Ticket | None = None) -> Generation:
        """Decode ``gen`` from ``prompt`` (token ids) in the step policy's iterations; returns it done.
        A cancelled caller's row leaves at the next iteration."""
        (work,) = await self._submit([prompt], ticket, gen=gen)
        return work.future.result()

    async def _submit(self, sequences: Sequence[np.ndarray], ticket: Ticket | None,
                      state: State | None = None, stream: bool = False, gen: Generation | None = None) -> list[Work]:
        """Queue ``sequences`` and wait until each is answered; returns their (done) work."""
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
            works = [Work(s, request, now, loop.create_future(), self._share(s.shape[0]), state, stream, gen=gen)
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
                    await works[0].future
                else:
                    await asyncio.gather(*(w.future for w in works))
                return works
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
            plan = self._policy.schedule(self._queue, now)
            taken = plan.taken
            self._queued_cost = max(0.0, self._queued_cost - sum(w.share for w in taken))
            if not self._queue:
                self._queued_cost = 0.0  # no drift from float rounding
            if not plan.runs:
                continue
            whole = not self._policy.pending  # whole-sequence iterations: predicted from the taken shares
            predicted = (sum(self._cost.share(w.steps, len(taken)) for w in taken)
                         if self._cost and whole else 0.0)
            self._running_until = now + predicted * self._correction
            try:
                stats = await asyncio.to_thread(self._execute, plan, deliver)
            except Exception as exc:  # a policy bug: every caller still gets an answer
                log.exception("batch iteration failed")
                _resolve([*taken, *self._policy.abort()], exc)
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

    def _execute(self, plan: Plan, deliver: Deliver) -> IterationStats:
        """The worker thread's part of an iteration: each run through the executor, its output back
        to the policy, the finished work answered at once."""
        stages = {"pad": 0.0, "inference": 0.0, "unpad": 0.0}
        finished: list[Work] = []
        model_cpu = 0.0
        for run in plan.runs:
            try:
                out = self._executor.run(run)
            except Exception as exc:  # reaches every sequence of this run and of the ones not run
                deliver(self._policy.abort(), exc)
                break
            t0 = time.perf_counter()
            done = self._policy.update(run, out)
            if done is None:
                works, results = run.works, out.rows
            else:
                works, results = [w for w, _ in done], [r for _, r in done]
            deliver(works, results)
            finished += works
            stages["pad"] += out.pad_s
            stages["inference"] += out.inference_s
            stages["unpad"] += time.perf_counter() - t0
            model_cpu += out.model_cpu_s
        stages["batch"] = time.perf_counter() - plan.at
        runs = plan.runs
        return IterationStats(
            sequences=len(finished), requests=len({w.request for w in finished}), buckets=len(runs),
            real=sum(int(r.lengths.sum()) for r in runs), computed=sum(len(r.works) * r.width for r in runs),
            lengths=[w.steps for w in finished], waits=[plan.at - w.enqueued for w in plan.started],
            stages=stages, rows=len(runs[0].works) if plan.continuous else 0,
            steps=runs[0].width if plan.continuous else 0, model_cpu=model_cpu, decoding=plan.decoding,
        )

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
        mean_length = sum(w.steps for w in self._queue) / len(self._queue)
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
