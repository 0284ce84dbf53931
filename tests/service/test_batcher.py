import asyncio

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import Overloaded
from service.runtime import CostModel
from service.settings import BatchingSettings

COST = CostModel(60e-6, 5e-6, 2e-6)


def fake_model(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Output depends on the real steps only: [sum of real values, length]."""
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    return np.stack([(x[..., 0] * mask).sum(1), lengths.astype(np.float64)], axis=1)


class Recorder:
    def __init__(self):
        self.batches = []

    def __call__(self, **kw):
        self.batches.append(kw)


@pytest.mark.parametrize("bucketing", ["cost", "none"])
def test_concurrent_requests_each_get_their_own_rows(bucketing):
    rec = Recorder()
    batcher = Batcher(fake_model, BatchingSettings(max_batch_size=32, bucketing=bucketing, max_latency_ms=10_000),
                      COST, rec)
    rng = np.random.default_rng(0)
    requests = [[rng.standard_normal((int(rng.integers(1, 80)), 3)).astype(np.float32)
                 for _ in range(int(rng.integers(1, 4)))] for _ in range(150)]

    async def main():
        return await asyncio.gather(*(batcher.infer(r) for r in requests))

    results = asyncio.run(main())
    for req, out in zip(requests, results, strict=True):
        expected = fake_model(*_pad(req))
        np.testing.assert_allclose(out, expected, atol=1e-5)  # float32 sums; lengths exact
    assert max(b["sequences"] for b in rec.batches) > 1
    assert max(b["requests"] for b in rec.batches) > 1
    assert sum(b["sequences"] for b in rec.batches) >= sum(len(r) for r in requests)
    assert all(b["computed"] >= b["real"] for b in rec.batches)


def _pad(seqs):
    from models.data import pad

    return pad(seqs)


def test_admission_limit_sheds_at_once():
    batcher = Batcher(fake_model, BatchingSettings(max_queue=4), COST)
    seqs = [np.ones((3, 3), np.float32)] * 5
    with pytest.raises(Overloaded, match="at capacity"):
        asyncio.run(batcher.infer(seqs))
    assert batcher.admitted == 0


def test_arriving_requests_hold_a_slot_so_refusal_comes_before_decoding():
    batcher = Batcher(fake_model, BatchingSettings(max_queue=4), COST)

    async def main():
        slots = [batcher.reserve() for _ in range(4)]  # four requests still uploading
        assert batcher.admitted == 4
        with pytest.raises(Overloaded, match="at capacity"):
            batcher.reserve()  # the fifth is refused before its body is read
        # one decoded request needs two slots, but the queue is spoken for: refused, slot freed
        with slots[0], pytest.raises(Overloaded):
            await batcher.infer([np.ones((2, 3), np.float32)] * 2, slots[0])
        assert batcher.admitted == 3
        for slot in slots[1:]:
            slot.release()
        with batcher.reserve() as slot:
            out = await batcher.infer([np.ones((2, 3), np.float32)] * 4, slot)  # grows 1 -> 4
            assert out.shape[0] == 4 and batcher.admitted == 4
        assert batcher.admitted == 0

    asyncio.run(main())


def test_a_cancelled_request_gives_its_slots_back():
    batcher = Batcher(fake_model, BatchingSettings(max_queue=8), COST)

    async def one():
        with batcher.reserve() as slot:
            await asyncio.sleep(0)
            await batcher.infer([np.ones((2, 3), np.float32)] * 3, slot)

    async def main():
        task = asyncio.create_task(one())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batcher.admitted == 0

    asyncio.run(main())


def test_model_errors_reach_every_caller_and_release_admission():
    def broken(x, lengths):
        raise RuntimeError("kernel failure")

    batcher = Batcher(broken, BatchingSettings(), COST)

    async def main():
        return await asyncio.gather(*(batcher.infer([np.ones((2, 3), np.float32)]) for _ in range(5)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert batcher.admitted == 0


def test_batching_off_runs_requests_alone():
    rec = Recorder()
    batcher = Batcher(fake_model, BatchingSettings(enabled=False), COST, rec)

    async def main():
        await asyncio.gather(*(batcher.infer([np.ones((2, 3), np.float32)]) for _ in range(10)))

    asyncio.run(main())
    assert [b["requests"] for b in rec.batches] == [1] * 10
