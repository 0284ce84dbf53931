import asyncio
import threading
import time

import numpy as np
import pytest

from rnnserve.bundle.batch import pad
from rnnserve.bundle.signature import Signature
from rnnserve.service.batching.buckets import BucketPolicy
from rnnserve.service.batching.executor import Executor
from rnnserve.service.batching.policies import make_policy
from rnnserve.service.batching.scheduler import Scheduler
from rnnserve.service.errors import Overloaded, Unavailable
from rnnserve.service.runtime.cost import CostModel
from rnnserve.service.settings import BatchingSettings

COST = CostModel(60e-6, 5e-6, 2e-6)
F = 3


def fake_model(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Output depends on the real steps only: [sum of real values, length]."""
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    return np.stack([(x[..., 0] * mask).sum(1), lengths.astype(np.float64)], axis=1)


class Recorder:
    def __init__(self):
        self.batches = []

    def __call__(self, stats):
        self.batches.append(stats)


class FnRuntime:
    """A runtime around a plain function (what the executor calls)."""

    def __init__(self, run):
        self.run = run


def executor(run=fake_model) -> Executor:
    return Executor(FnRuntime(run), Signature.for_features(F, 2))


def make(run=fake_model, cost=COST, observe=None, **settings) -> Scheduler:
    cfg = BatchingSettings(**settings)
    return Scheduler(make_policy(cfg, cost, ()), executor(run), cfg, cost, observe)


def seq(n, value=1.0):
    return np.full((n, F), value, np.float32)


@pytest.mark.parametrize("bucketing", ["cost", "none"])
def test_concurrent_requests_each_get_their_own_rows(bucketing):
    rec = Recorder()
    scheduler = make(observe=rec, max_batch_size=32, bucketing=bucketing, max_latency_ms=10_000)
    rng = np.random.default_rng(0)
    requests = [[rng.standard_normal((int(rng.integers(1, 80)), F)).astype(np.float32)
                 for _ in range(int(rng.integers(1, 4)))] for _ in range(150)]

    async def main():
        out = await asyncio.gather(*(scheduler.infer(r) for r in requests))
        await scheduler.close()  # the last iteration is observed after its answers go out
        return out

    results = asyncio.run(main())
    for req, out in zip(requests, results, strict=True):
        np.testing.assert_allclose(out, fake_model(*pad(req)), atol=1e-5)
    assert max(b.sequences for b in rec.batches) > 1
    assert max(b.requests for b in rec.batches) > 1
    assert sum(b.sequences for b in rec.batches) == sum(len(r) for r in requests)
    assert all(b.computed >= b.real for b in rec.batches)
    assert scheduler.admission.held == 0


def test_admission_limit_refuses_at_once():
    scheduler = make(max_queue=4)
    with pytest.raises(Overloaded, match="at capacity"):
        asyncio.run(scheduler.infer([seq(3)] * 5))
    assert scheduler.admission.held == 0


def test_arriving_requests_hold_a_slot_so_refusal_comes_before_decoding():
    scheduler = make(max_queue=4)

    async def main():
        tickets = [scheduler.reserve() for _ in range(4)]  # four requests still uploading
        assert scheduler.admission.held == 4
        with pytest.raises(Overloaded, match="at capacity"):
            scheduler.reserve()  # the fifth is refused before its body is read
        # one decoded request needs two slots, but the queue is spoken for: refused, slot freed
        with tickets[0], pytest.raises(Overloaded):
            await scheduler.infer([seq(2)] * 2, tickets[0])
        assert scheduler.admission.held == 3
        for ticket in tickets[1:]:
            ticket.release()
        with scheduler.reserve() as ticket:
            out = await scheduler.infer([seq(2)] * 4, ticket)  # grows 1 -> 4
            assert len(out) == 4 and scheduler.admission.held == 4
        assert scheduler.admission.held == 0

    asyncio.run(main())


def test_a_cancelled_caller_is_cancelled_and_its_queued_work_never_runs():
    gate = threading.Event()
    ran: list[int] = []

    def slow(x, lengths):
        gate.wait(5)
        ran.extend(lengths.tolist())
        return fake_model(x, lengths)

    scheduler = make(run=slow, max_batch_size=1, max_latency_ms=60_000)

    async def main():
        first = asyncio.create_task(scheduler.infer([seq(7)]))  # runs, blocked on the gate
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(scheduler.infer([seq(11)] * 3))  # waits behind it
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):  # a cancellation, not an error answer
            await queued
        gate.set()
        await first
        after = await scheduler.infer([seq(5)])
        return after

    out = asyncio.run(main())
    assert out[0][1] == 5
    assert 11 not in ran, "work of a cancelled caller was computed"
    assert scheduler.admission.held == 0


def test_model_errors_reach_every_caller_and_release_admission():
    def broken(x, lengths):
        raise RuntimeError("kernel failure")

    scheduler = make(run=broken)

    async def main():
        return await asyncio.gather(*(scheduler.infer([seq(2)]) for _ in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert scheduler.admission.held == 0


def test_batching_off_runs_requests_alone():
    rec = Recorder()
    scheduler = make(observe=rec, enabled=False)

    async def main():
        await asyncio.gather(*(scheduler.infer([seq(2)] * 2) for _ in range(10)))
        await scheduler.close()

    asyncio.run(main())
    assert [b.requests for b in rec.batches] == [1] * 10
    assert [b.sequences for b in rec.batches] == [2] * 10


def test_predicted_wait_sheds_a_flood_at_once():
    """A slow model and a deep queue: a newcomer whose predicted wait passes max_latency_ms is
    refused immediately instead of queueing past the limit."""
    def slow(x, lengths):
        time.sleep(0.05)
        return fake_model(x, lengths)

    # each 500-step sequence is predicted to cost ~0.1 s of model time
    cost = CostModel(fixed=1e-3, per_step=1e-5, per_row_step=2e-4)
    scheduler = make(run=slow, cost=cost, max_batch_size=1, max_latency_ms=300, max_queue=1000)

    async def main():
        tasks = [asyncio.create_task(scheduler.infer([seq(500)])) for _ in range(20)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(Unavailable, match="predicted queue wait"):
            await scheduler.infer([seq(500)])
        refused_in = time.perf_counter() - started
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return refused_in, results

    refused_in, results = asyncio.run(main())
    assert refused_in < 0.05
    shed = [r for r in results if isinstance(r, Unavailable)]
    assert shed and len(shed) < 20  # the head of the queue is served, the tail refused


def test_sequences_queued_past_the_latency_limit_are_answered_503_not_run_late():
    def slow(x, lengths):
        time.sleep(0.2)
        return fake_model(x, lengths)

    scheduler = make(run=slow, cost=None, bucketing="none", max_batch_size=1, max_latency_ms=100)

    async def main():
        return await asyncio.gather(*(scheduler.infer([seq(3)]) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], list) and isinstance(results[0][0], np.ndarray)
    assert all(isinstance(r, Unavailable) and "queued" in r.message for r in results[1:])


def test_a_short_bucket_is_answered_before_the_long_bucket_of_its_batch_finishes():
    def timed(x, lengths):
        time.sleep(0.0005 * x.shape[1])  # cost grows with the padded length
        return fake_model(x, lengths)

    scheduler = make(run=timed, max_batch_size=64, max_latency_ms=60_000)
    done: dict[int, float] = {}

    async def one(n):
        await scheduler.infer([seq(n)])
        done[n] = time.perf_counter()

    async def main():
        blocker = asyncio.create_task(scheduler.infer([seq(1)]))  # runs alone; the rest queue up
        await asyncio.sleep(0)
        await asyncio.gather(blocker, one(2), one(1000))

    asyncio.run(main())
    assert done[2] < done[1000] - 0.2


def test_close_drains_admitted_work_then_refuses_and_stops():
    def slow(x, lengths):
        time.sleep(0.05)
        return fake_model(x, lengths)

    scheduler = make(run=slow, max_batch_size=2, max_latency_ms=60_000)

    async def main():
        tasks = [asyncio.create_task(scheduler.infer([seq(4)])) for _ in range(6)]
        await asyncio.sleep(0.01)
        await scheduler.close(timeout=10)
        results = await asyncio.gather(*tasks)
        with pytest.raises(Unavailable, match="shutting down"):
            await scheduler.infer([seq(4)])
        with pytest.raises(Unavailable, match="shutting down"):
            scheduler.reserve()
        return results, scheduler._task

    results, task = asyncio.run(main())
    assert len(results) == 6 and all(len(r) == 1 and r[0].shape == (2,) for r in results)
    assert task.done()


class CountingPolicy(BucketPolicy):
    def __init__(self, *args):
        super().__init__(*args)
        self.takes = 0

    def schedule(self, queue, now):
        self.takes += 1
        return super().schedule(queue, now)


def test_an_idle_scheduler_does_not_poll():
    policy = CountingPolicy(COST, 64, 0.85)
    scheduler = Scheduler(policy, executor(), BatchingSettings(), COST)

    async def main():
        await scheduler.infer([seq(3)])
        n = policy.takes
        await asyncio.sleep(0.2)
        return n, policy.takes

    before, after = asyncio.run(main())
    assert before == after == 1


def test_each_iteration_reports_the_cpu_its_model_runs_took_on_their_thread():
    def busy_model(x, lengths):  # burns CPU on the calling thread, as ONNX Runtime with one intra-op thread
        end = time.thread_time() + 0.004
        while time.thread_time() < end:
            pass
        return fake_model(x, lengths)

    def sleepy_model(x, lengths):  # waits without CPU: its iterations report (almost) none
        time.sleep(0.004)
        return fake_model(x, lengths)

    for model, low, high in ((busy_model, 0.004, 1.0), (sleepy_model, 0.0, 0.002)):
        rec = Recorder()
        scheduler = make(run=model, observe=rec, max_latency_ms=10_000)

        async def main(scheduler=scheduler):
            await asyncio.gather(*(scheduler.infer([seq(n)]) for n in (3, 40, 7)))
            await scheduler.close()

        asyncio.run(main())
        per_run = [b.model_cpu / b.buckets for b in rec.batches]
        assert per_run and all(low <= c < high for c in per_run), per_run
