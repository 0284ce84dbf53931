import asyncio
import threading

import numpy as np
import pytest

from rnnserve.bundle.signature import Signature
from rnnserve.service.batching.executor import Executor
from rnnserve.service.batching.policies import make_policy
from rnnserve.service.batching.scheduler import Scheduler
from rnnserve.service.batching.steps import StepPolicy, choose_steps
from rnnserve.service.runtime.cost import CostModel
from rnnserve.service.settings import BatchingSettings

COST = CostModel(60e-6, 5e-6, 2e-6)
F = 3
SIZES = (2,)


class FakeRNN:
    """A recurrence whose state after a sequence is [sum of feature 0, steps]: exact under any chunking,
    and the output is that state. It checks that padded steps are never applied."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []  # (rows, padded steps)
        self.lock = threading.Lock()

    def __call__(self, x, lengths, states):
        assert self.lock.acquire(blocking=False), "two model runs at once"
        try:
            mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
            assert np.all(x[~mask] == 0), "padding is not zero"
            assert (lengths >= 1).all()
            h = states[0] + np.stack([(x[..., 0] * mask).sum(1), lengths.astype(np.float32)], axis=1)
            self.calls.append(x.shape[:2])
            return h.copy(), (h,)
        finally:
            self.lock.release()


class StatefulRuntime:
    """A runtime around a recurrence (what the executor calls): ``run_stateful`` is the recurrence."""

    def __init__(self, rnn):
        self.run_stateful = rnn


def make(rnn, max_rows=8, max_steps=16, **settings):
    cfg = BatchingSettings(max_batch_size=max_rows, max_latency_ms=60_000, policy="steps", max_steps=max_steps,
                           **settings)
    policy = make_policy(cfg, COST, SIZES)
    assert isinstance(policy, StepPolicy)
    return Scheduler(policy, Executor(StatefulRuntime(rnn), Signature.for_features(F, 2)), cfg, COST)


def seqs(n, seed=0, top=300):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, top)), F)).astype(np.float32) for _ in range(n)]


def expected(s):
    return np.array([s[:, 0].sum(), len(s)], np.float32)


def test_every_sequence_gets_its_own_exact_answer_across_iterations():
    rnn = FakeRNN()
    scheduler = make(rnn)
    data = seqs(60)

    async def main():
        return await asyncio.gather(*(scheduler.infer([s]) for s in data))

    out = asyncio.run(main())
    for s, row in zip(data, out, strict=True):
        np.testing.assert_allclose(row[0], expected(s), rtol=1e-5)
    assert max(r for r, _ in rnn.calls) > 1, "never batched"
    assert max(t for _, t in rnn.calls) <= 16, "an iteration ran past max_steps"
    assert sum(1 for r, t in rnn.calls) > len(data) / 8, "long sequences should take several iterations"


def test_short_sequences_leave_before_the_long_ones_they_were_batched_with():
    rnn = FakeRNN()
    scheduler = make(rnn, max_steps=4)
    order: list[int] = []

    async def one(n):
        await scheduler.infer([np.ones((n, F), np.float32)])
        order.append(n)

    async def main():
        await asyncio.gather(one(400), one(3), one(40), one(7))

    asyncio.run(main())
    assert order == [3, 7, 40, 400]


def test_stateful_chunks_carry_state_exactly_and_mix_with_plain_requests():
    rnn = FakeRNN()
    scheduler = make(rnn)
    stream = seqs(1, seed=3, top=200)[0]
    cuts = [0, 1, 2, 9, 50, len(stream)]

    async def main():
        state = None
        answers = []
        plain = asyncio.gather(*(scheduler.infer([s]) for s in seqs(20, seed=4)))
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            row, state = await scheduler.infer_stateful(stream[lo:hi], state)
            answers.append(row)
        await plain
        return answers, state

    answers, state = asyncio.run(main())
    for hi, row in zip(cuts[1:], answers, strict=True):
        np.testing.assert_allclose(row, expected(stream[:hi]), rtol=1e-5)
    np.testing.assert_allclose(state[0], expected(stream), rtol=1e-5)


def test_a_cancelled_sequence_leaves_the_engine_and_the_others_finish():
    rnn = FakeRNN()
    scheduler = make(rnn, max_steps=2)

    async def main():
        doomed = asyncio.create_task(scheduler.infer([np.ones((1000, F), np.float32)]))
        others = [asyncio.create_task(scheduler.infer([np.ones((30, F), np.float32)])) for _ in range(3)]
        await asyncio.sleep(0.01)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        calls_at_cancel = len(rnn.calls)
        out = await asyncio.gather(*others)
        await asyncio.sleep(0.01)
        return out, calls_at_cancel

    out, at_cancel = asyncio.run(main())
    assert all(o[0][1] == 30 for o in out)
    assert len(rnn.calls) - at_cancel <= 16, "the cancelled sequence kept being computed"
    assert scheduler.admission.held == 0


def test_a_model_error_fails_the_active_sequences_and_the_engine_goes_on():
    calls = {"n": 0}

    def flaky(x, lengths, states):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("kernel failure")
        return FakeRNN()(x, lengths, states)

    scheduler = make(flaky)

    async def main():
        first = await asyncio.gather(scheduler.infer([np.ones((5, F), np.float32)]), return_exceptions=True)
        second = await scheduler.infer([np.ones((5, F), np.float32)])
        return first, second

    first, second = asyncio.run(main())
    assert isinstance(first[0], RuntimeError) and second[0][1] == 5


def test_choose_steps_maximises_useful_steps_per_second():
    assert choose_steps(np.array([100, 100, 100]), COST, 64) == 64
    assert choose_steps(np.array([5, 5]), COST, 64) == 5
    t = choose_steps(np.array([1, 200, 200, 200]), COST, 64)
    assert t == 64  # one nearly-done row does not cut everyone's iteration to one step
    assert choose_steps(np.array([3] * 30 + [500]), COST, 64) == 3  # most rows finish: let them leave
