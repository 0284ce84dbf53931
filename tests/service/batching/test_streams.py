import asyncio
import time

import numpy as np
import pytest

from rnnserve.service.batching.streams import StreamManager
from rnnserve.service.errors import InvalidInput, StreamLimit, UnprocessableInput
from rnnserve.service.observability.metrics import MetricsSink
from rnnserve.service.settings import StreamSettings
from rnnserve.service.types import SequenceControl as S


class Events(MetricsSink):
    def __init__(self):
        self.events: list[str] = []
        self.live: list[tuple[int, int]] = []

    def stream_event(self, event):
        self.events.append(event)

    def streams_live(self, count, state_bytes):
        self.live.append((count, state_bytes))


class Summing:
    """run(chunk, state) -> (output, state): the state is the running sum of the chunk's values."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.seen: list[float] = []

    async def __call__(self, chunk, state):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            total = (0.0 if state is None else float(state[0][0])) + float(chunk.sum())
            self.seen.append(float(chunk.sum()))
            return np.array([total], np.float32), (np.array([total], np.float32),)
        finally:
            self.active -= 1


def chunk(value, n=1):
    return np.full((n, 1), value, np.float32)


def manager(**settings):
    metrics = Events()
    return StreamManager(StreamSettings(**settings), "m", "v1", state_bytes=8, metrics=metrics), metrics


def test_start_continue_end_and_the_answer_is_on_the_whole_prefix():
    mgr, metrics = manager()
    run = Summing()

    async def main():
        a = await mgr.chunk(S(7, start=True), chunk(1.0, 3), run)
        b = await mgr.chunk(S(7), chunk(2.0, 2), run)
        c = await mgr.chunk(S(7, end=True), chunk(10.0), run)
        return a, b, c

    (a, sa), (b, sb), (c, sc) = asyncio.run(main())
    assert (a[0], sa) == (3.0, 3) and (b[0], sb) == (7.0, 5) and (c[0], sc) == (17.0, 6)
    assert mgr.live == 0 and metrics.events == ["started", "ended"]
    assert metrics.live[-1] == (0, 0)


@pytest.mark.parametrize("history", ["never", "ended", "expired"])
def test_a_continuing_chunk_without_a_live_stream_needs_start(history):
    mgr, metrics = manager(idle_timeout_s=0.5)
    run = Summing()

    async def main():
        if history == "ended":
            await mgr.chunk(S("abc", start=True, end=True), chunk(1.0), run)
        if history == "expired":
            await mgr.chunk(S("abc", start=True), chunk(1.0), run)
            assert mgr.expire(time.monotonic() + 1.0) == 1
        await mgr.chunk(S("abc"), chunk(1.0), run)

    with pytest.raises(InvalidInput) as info:
        asyncio.run(main())
    assert "sequence 'abc' to model 'm' must specify the START flag" in info.value.message
    assert info.value.field == "sequence_id"
    if history == "expired":
        assert "expired" in metrics.events


def test_int_and_string_ids_are_different_streams():
    mgr, _ = manager()
    run = Summing()

    async def main():
        await mgr.chunk(S(5, start=True), chunk(1.0), run)
        with pytest.raises(InvalidInput):
            await mgr.chunk(S("5"), chunk(1.0), run)
        return await mgr.chunk(S(5), chunk(1.0), run)

    assert asyncio.run(main())[0][0] == 2.0


def test_start_on_a_live_stream_restarts_it():
    mgr, metrics = manager()
    run = Summing()

    async def main():
        await mgr.chunk(S(1, start=True), chunk(5.0), run)
        return await mgr.chunk(S(1, start=True), chunk(1.0), run)

    (row, steps) = asyncio.run(main())
    assert row[0] == 1.0 and steps == 1 and "restarted" in metrics.events and mgr.live == 1


def test_the_stream_limit_refuses_a_new_start_but_serves_live_streams():
    mgr, metrics = manager(max_streams=2)
    run = Summing()

    async def main():
        await mgr.chunk(S(1, start=True), chunk(1.0), run)
        await mgr.chunk(S(2, start=True), chunk(1.0), run)
        with pytest.raises(StreamLimit, match="limit is 2"):
            await mgr.chunk(S(3, start=True), chunk(1.0), run)
        return await mgr.chunk(S(1), chunk(1.0), run)

    assert asyncio.run(main())[0][0] == 2.0
    assert metrics.events.count("refused") == 1


def test_a_chunk_past_max_stream_steps_is_refused_and_the_state_kept():
    mgr, _ = manager(max_stream_steps=5)
    run = Summing()

    async def main():
        await mgr.chunk(S(1, start=True), chunk(1.0, 4), run)
        with pytest.raises(UnprocessableInput, match="limit is 5"):
            await mgr.chunk(S(1), chunk(1.0, 2), run)
        return await mgr.chunk(S(1), chunk(1.0), run)

    row, steps = asyncio.run(main())
    assert row[0] == 5.0 and steps == 5


def test_chunks_of_one_stream_run_one_at_a_time_in_arrival_order():
    mgr, _ = manager()
    run = Summing(delay=0.01)

    async def main():
        await mgr.chunk(S(9, start=True), chunk(0.0), run)
        results = await asyncio.gather(*(mgr.chunk(S(9), chunk(float(v)), run) for v in range(1, 11)))
        return results

    results = asyncio.run(main())
    assert run.max_active == 1
    assert run.seen[1:] == [float(v) for v in range(1, 11)]  # never reordered
    assert [r[0][0] for r in results] == list(np.cumsum(range(1, 11)).astype(float))


def test_different_streams_run_concurrently():
    mgr, _ = manager()
    run = Summing(delay=0.02)

    async def main():
        await asyncio.gather(*(mgr.chunk(S(i, start=True), chunk(1.0), run) for i in range(1, 9)))

    asyncio.run(main())
    assert run.max_active == 8


def test_a_failed_chunk_leaves_the_state_as_it_was():
    mgr, _ = manager()
    good = Summing()

    async def bad(chunk_, state):
        raise RuntimeError("boom")

    async def main():
        await mgr.chunk(S(1, start=True), chunk(2.0), good)
        with pytest.raises(RuntimeError):
            await mgr.chunk(S(1), chunk(100.0), bad)
        return await mgr.chunk(S(1), chunk(1.0), good)

    row, steps = asyncio.run(main())
    assert row[0] == 3.0 and steps == 2


def test_expiry_skips_streams_with_a_chunk_in_flight():
    mgr, _ = manager(idle_timeout_s=60)
    run = Summing(delay=0.1)

    async def main():
        await mgr.chunk(S(1, start=True), chunk(1.0), Summing())
        busy = asyncio.create_task(mgr.chunk(S(1), chunk(1.0), run))
        await asyncio.sleep(0.05)
        later = time.monotonic() + 120  # as if it had been idle for two minutes
        assert mgr.expire(later) == 0  # in flight
        await busy
        return mgr.expire(later)

    assert asyncio.run(main()) == 1
