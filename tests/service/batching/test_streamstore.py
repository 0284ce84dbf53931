"""The stream stores under the stream manager: the same lifecycle on all three, and for the shared
stores, with a real redis-server and a real Redis Cluster: several managers (workers) on one stream,
compare-and-set under contention, the store-wide stream limit, TTL expiry, model versions,
exactly-once chunks with ``sequence_offset``, coalesced round trips, and an unreachable / restarted
Redis (the cluster's own cases, its shards and failover: test_clusterstore.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rnnserve.service.batching.redisstore import RedisStore, decode, encode
from rnnserve.service.batching.streams import StreamManager, open_store
from rnnserve.service.batching.streamstore import MemoryStore, StreamRecord
from rnnserve.service.errors import InvalidInput, StreamLimit, Unavailable
from rnnserve.service.observability.metrics import MetricsSink
from rnnserve.service.settings import StreamSettings
from rnnserve.service.types import SequenceControl as S

pytestmark = pytest.mark.e2e  # a real redis-server


class Events(MetricsSink):
    def __init__(self):
        self.events: list[str] = []
        self.trips: list[tuple[int, int]] = []
        self.errors: list[str] = []

    def stream_event(self, event):
        self.events.append(event)

    def store_round_trip(self, reads, writes, seconds):
        self.trips.append((reads, writes))

    def store_error(self, reason):
        self.errors.append(reason)


class Summing:
    """run(chunk, state) -> (output, state): the state is the running sum of the chunk's values."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.runs = 0

    async def __call__(self, chunk, state):
        self.runs += 1
        await asyncio.sleep(self.delay)
        total = (0.0 if state is None else float(state[0][0])) + float(chunk.sum())
        return np.array([total], np.float32), (np.array([total], np.float32), np.array([-total, 1.0], np.float32))


def chunk(value, n=1):
    return np.full((n, 1), value, np.float32)


def manager(store, version="v1", **settings):
    """A stream manager (a worker) of model "m" on ``store`` (a store URL, or a store object)."""
    metrics = Events()
    settings = StreamSettings(store=store if isinstance(store, str) else "memory", **settings)
    if isinstance(store, str):
        store = open_store(settings, "m", metrics)
    return StreamManager(settings, "m", version, state_bytes=12, metrics=metrics, store=store), metrics


def url_of(request, kind: str) -> str:
    """The URL of an empty store of ``kind``: one redis-server, or a Redis Cluster (3 primaries + 3 replicas)."""
    return {"memory": lambda: "memory", "redis": lambda: request.getfixturevalue("redis_server").url,
            "cluster": lambda: request.getfixturevalue("flushed_redis_cluster").url}[kind]()


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request):
    return url_of(request, request.param)


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request):
    return url_of(request, request.param)


def test_open_store_follows_the_setting(redis_server):
    assert isinstance(open_store(StreamSettings(), "m"), MemoryStore)
    store = open_store(StreamSettings(store=redis_server.url), "m")
    assert isinstance(store, RedisStore) and store.shared and "127.0.0.1" in store.describe()


def test_a_record_round_trips_through_its_bytes():
    rec = StreamRecord((np.arange(3, dtype=np.float32), np.ones(2, np.float32)), 17, "2024-01", b"e" * 16, 4, False,
                       12, b"d" * 16, np.array([0.5, -1.0], np.float32))
    back = decode(encode(rec))
    assert (back.steps, back.version, back.etag, back.seq, back.ended, back.last_offset, back.last_digest) == (
        17, "2024-01", b"e" * 16, 4, False, 12, b"d" * 16)
    assert [r.tolist() for r in back.state] == [[0, 1, 2], [1, 1]] and back.last_row.tolist() == [0.5, -1.0]
    with pytest.raises(ValueError):
        decode(b"\x07garbage")


def test_the_lifecycle_is_the_same_on_every_store(store_url):
    async def main():
        mgr, metrics = manager(store_url)
        run = Summing()
        a = await mgr.chunk(S(7, start=True), chunk(1.0, 3), run)
        b = await mgr.chunk(S(7), chunk(2.0, 2), run)
        with pytest.raises(InvalidInput, match="must specify the START flag"):
            await mgr.chunk(S("7"), chunk(1.0), run)  # a string id is another stream
        c = await mgr.chunk(S(7, start=True), chunk(4.0), run)  # restart
        d = await mgr.chunk(S(7, end=True), chunk(1.0), run)
        with pytest.raises(InvalidInput, match="sequence 7 to model 'm' must specify the START flag"):
            await mgr.chunk(S(7), chunk(1.0), run)  # ended
        mgr.close()
        return [(r[0], s) for r, s in (a, b, c, d)], metrics.events, mgr.live

    answers, events, live = asyncio.run(main())
    assert answers == [(3.0, 3), (7.0, 5), (4.0, 1), (5.0, 2)]
    assert events == ["started", "restarted", "ended"] and live == 0


def test_with_sequence_offset_a_chunk_applies_exactly_once(store_url):
    async def main():
        mgr, metrics = manager(store_url)
        run = Summing()
        await mgr.chunk(S(1, start=True, offset=0), chunk(1.0, 2), run)
        first = await mgr.chunk(S(1, offset=2), chunk(3.0), run)
        again = await mgr.chunk(S(1, offset=2), chunk(3.0), run)  # its answer was lost: resent
        runs = run.runs
        with pytest.raises(InvalidInput, match="starts at timestep 1 .*the stream is at 3: it would apply out of"):
            await mgr.chunk(S(1, offset=1), chunk(3.0), run)  # behind, and not the last chunk
        with pytest.raises(InvalidInput, match="out of order"):
            await mgr.chunk(S(1, offset=2), chunk(9.0), run)  # same place, other data: not a resend
        with pytest.raises(Unavailable, match="starts at timestep 5 .* at 3: the chunks before it are missing .*"
                                                  "resend the stream's data from timestep 3"):
            await mgr.chunk(S(1, offset=5), chunk(1.0), run)  # ahead
        end = await mgr.chunk(S(1, offset=3, end=True), chunk(1.0), run)
        end_again = await mgr.chunk(S(1, offset=3, end=True), chunk(1.0), run)  # END's answer lost: resent
        mgr.close()
        return first, again, runs, end, end_again, metrics.events

    first, again, runs, end, end_again, events = asyncio.run(main())
    assert (first[0][0], first[1]) == (again[0][0], again[1]) == (5.0, 3) and runs == 2
    assert (end[0][0], end[1]) == (end_again[0][0], end_again[1]) == (6.0, 4)
    assert events.count("replayed") == 2


def test_chunks_of_one_stream_alternate_over_two_workers(shared_url):
    async def main():
        a, _ = manager(shared_url)
        b, _ = manager(shared_url)
        run = Summing()
        answers = [await a.chunk(S("s", start=True), chunk(1.0), run)]
        for k in range(1, 10):
            answers.append(await (a, b)[k % 2].chunk(S("s", end=k == 9), chunk(float(k + 1)), run))
        return answers

    answers = asyncio.run(main())
    assert [r[0] for r, _ in answers] == list(np.cumsum(range(1, 11)).astype(float))
    assert [s for _, s in answers] == list(range(1, 11))


def test_two_workers_computing_one_stream_at_once_never_fork_it(shared_url):
    """Chunks of one stream at two workers at the same moment: the loser of each compare-and-set
    computes again on the winner's state; after a few lost rounds it gets a retryable 503 instead.
    Every chunk is applied exactly once or not at all, and the state is the sum of the applied ones."""

    async def main():
        workers = [manager(shared_url) for _ in range(2)]
        run = Summing(delay=0.01)
        await workers[0][0].chunk(S(3, start=True), chunk(0.0), run)
        values = range(1, 21)
        results = await asyncio.gather(*(workers[v % 2][0].chunk(S(3), chunk(float(v)), run) for v in values),
                                       return_exceptions=True)
        final, steps = await workers[0][0].chunk(S(3, end=True), chunk(0.0), run)
        return results, final[0], steps, sum(m.events.count("conflict") for _, m in workers)

    results, final, steps, conflicts = asyncio.run(main())
    applied = [v for v, r in zip(range(1, 21), results, strict=True) if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, Unavailable) and "the chunk was not applied: resend it" in r.message for r in refused)
    assert final == float(sum(applied)) and steps == 2 + len(applied)
    seen = sorted(s for r in results if not isinstance(r, BaseException) for s in [r[1]])
    assert seen == list(range(2, 2 + len(applied)))  # each applied chunk saw a distinct prefix: no fork
    assert conflicts > 0 and len(applied) >= 10  # they really collided, and most still went through


def test_the_stream_limit_counts_the_whole_store(redis_server):
    async def main():
        a, ma = manager(redis_server.url, max_streams=2)
        b, mb = manager(redis_server.url, max_streams=2)
        run = Summing()
        await a.chunk(S(1, start=True), chunk(1.0), run)
        await b.chunk(S(2, start=True), chunk(1.0), run)
        with pytest.raises(StreamLimit, match="2 streams are live in the shared stream store, the limit is 2"):
            await a.chunk(S(3, start=True), chunk(1.0), run)
        await b.chunk(S(1), chunk(1.0), run)  # live streams are still served, at any worker
        await a.chunk(S(2, end=True), chunk(1.0), run)
        return await b.chunk(S(3, start=True), chunk(1.0), run), ma.events + mb.events

    (row, steps), events = asyncio.run(main())
    assert steps == 1 and events.count("refused") == 1


def test_idle_streams_expire_by_ttl_and_free_their_slot(shared_url):
    async def main():
        mgr, metrics = manager(shared_url, idle_timeout_s=0.3, max_streams=1, store_shards=1)
        run = Summing()
        await mgr.chunk(S(1, start=True), chunk(1.0), run)
        await asyncio.sleep(0.5)
        with pytest.raises(InvalidInput, match="must specify the START flag"):
            await mgr.chunk(S(1), chunk(1.0), run)
        await mgr.chunk(S(2, start=True), chunk(1.0), run)  # the expired stream no longer counts
        return metrics.events

    assert asyncio.run(main()).count("expired") == 1


def test_a_state_from_another_model_version_is_refused(shared_url):
    async def main():
        old, _ = manager(shared_url, version="v1")
        new, _ = manager(shared_url, version="v2")
        run = Summing()
        await old.chunk(S(5, start=True), chunk(1.0), run)
        with pytest.raises(InvalidInput, match="holds state of model 'm' version 'v1', but this server serves "
                                               "version 'v2'.*restart the stream with START") as info:
            await new.chunk(S(5), chunk(1.0), run)
        assert info.value.field == "sequence_id"
        await old.chunk(S(5), chunk(1.0), run)  # the old version still continues it
        return await new.chunk(S(5, start=True), chunk(2.0), run)  # START begins afresh on v2

    row, steps = asyncio.run(main())
    assert (row[0], steps) == (2.0, 1)


def test_an_iterations_reads_and_writes_share_round_trips(shared_url):
    """64 streams whose chunks are in flight together: their reads coalesce, and so do their writes
    (answers delivered together, as a scheduler iteration delivers them)."""

    async def main():
        mgr, metrics = manager(shared_url)
        gate = asyncio.Event()

        async def run(chunk_, state):  # every chunk of the wave finishes at once, like one iteration
            await gate.wait()
            total = (0.0 if state is None else float(state[0][0])) + float(chunk_.sum())
            return np.array([total], np.float32), (np.array([total], np.float32),)

        results = []
        for wave in range(3):
            tasks = [asyncio.create_task(mgr.chunk(S(k, start=wave == 0), chunk(1.0), run)) for k in range(1, 65)]
            await asyncio.sleep(0.05)
            gate.set()
            results.append(await asyncio.gather(*tasks))
            gate.clear()
        return results, metrics.trips, mgr.store

    results, trips, store = asyncio.run(main())
    assert all(row[0] == wave + 1 for wave, rs in enumerate(results) for row, _ in rs)
    # the first wave starts the streams (a START reads the store), later waves start from the records
    # the worker wrote: 64 reads and 3 x 64 writes in all
    assert sum(r for r, _ in trips) == 64 and sum(w for _, w in trips) == 3 * 64
    assert len(trips) <= 3 * 4, trips  # O(1) per wave, not 64 + 64
    assert store.round_trips == len(trips) and max(r for r, _ in trips) == 64


def test_an_unreachable_store_fails_stream_chunks_quickly_and_clearly(redis_server):
    async def main():
        mgr, metrics = manager(redis_server.url, store_timeout_s=0.5)
        run = Summing()
        await mgr.chunk(S(1, start=True), chunk(1.0), run)
        redis_server.stop()
        t0 = time.perf_counter()
        # the worker starts the chunk from the record it wrote, so the store is first needed to save it:
        # the outcome is unknown to the server, and it says how to resend exactly once
        with pytest.raises(Unavailable, match=r"stream store unavailable \(Redis at redis://127.0.0.1:\d+/0: "
                                              r"unreachable\) while saving stream 1: the chunk may or may not "
                                              r"have been applied; resend it with sequence_offset=1"):
            await mgr.chunk(S(1), chunk(1.0), run)
        elapsed = time.perf_counter() - t0
        redis_server.start()  # back, empty (no persistence): the stream is gone, a START works
        with pytest.raises(InvalidInput, match="must specify the START flag"):
            await mgr.chunk(S(1), chunk(1.0), run)
        row, _ = await mgr.chunk(S(1, start=True), chunk(2.0), run)  # the script is loaded again
        return elapsed, row[0], metrics.errors

    elapsed, row, errors = asyncio.run(main())
    assert elapsed < 2.0 and row == 2.0 and errors == ["unreachable"]


def test_a_store_that_does_not_answer_times_out(redis_server):
    import os
    import signal

    async def main():
        mgr, metrics = manager(redis_server.url, store_timeout_s=0.3)
        run = Summing()
        await mgr.chunk(S(1, start=True), chunk(1.0), run)
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # alive, accepting, silent
        try:
            t0 = time.perf_counter()
            with pytest.raises(Unavailable, match=r"no answer within 0.3 s \(streams.store_timeout_s\)"):
                await mgr.chunk(S(1, offset=1), chunk(1.0), run)  # the client's retry rule: always an offset
            elapsed = time.perf_counter() - t0
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        # the unanswered write reached Redis once it woke up: resending with the offset (the client's
        # retry rule) is answered from the store, not applied twice
        row, steps = await mgr.chunk(S(1, offset=1), chunk(1.0), run)
        again = await mgr.chunk(S(1, offset=2), chunk(1.0), run)
        return elapsed, row[0], steps, again, metrics.errors, metrics.events

    elapsed, row, steps, again, errors, events = asyncio.run(main())
    assert elapsed < 1.5 and (row, steps) == (2.0, 2) and errors == ["timeout"]
    assert (again[0][0], again[1]) == (3.0, 3) and "replayed" in events


def test_a_worker_continues_its_own_streams_without_reading_them_back(shared_url):
    """The record a worker wrote last is where its next chunk starts: one round trip per chunk (the
    write), not two; the compare-and-set still catches a stream another worker moved on."""

    async def main():
        a, events = manager(shared_url)
        b, _ = manager(shared_url)
        run = Summing()
        await a.chunk(S("own", start=True), chunk(1.0), run)
        before = len(events.trips)
        for _ in range(10):
            await a.chunk(S("own"), chunk(1.0), run)
        trips = events.trips[before:]
        moved = await b.chunk(S("own"), chunk(5.0), run)  # another worker moves the stream on
        after_b = await a.chunk(S("own", end=True), chunk(1.0), run)  # a's copy is stale: CAS, then a read
        return trips, moved, after_b, events.events

    trips, moved, after_b, events = asyncio.run(main())
    assert len(trips) == 10 and all(reads == 0 and writes == 1 for reads, writes in trips)
    assert moved[0][0] == 16.0 and after_b[0][0] == 17.0 and after_b[1] == 13
    assert "conflict" in events
