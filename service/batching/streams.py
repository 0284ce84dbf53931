"""Streams: stateful sequences with Triton's sequence semantics over a ``StreamStore``.

A stream is addressed by its ``SequenceControl.key``. Lifecycle (Triton's, where sound):

- a chunk with START creates the stream with a zero state, or restarts a live one;
- a chunk without START continues a live stream; for an unknown, ended or expired id it is refused
  (400 / INVALID_ARGUMENT) naming the id and saying the stream needs START;
- END answers the chunk, then frees the state;
- a stream idle for ``streams.idle_timeout_s`` is evicted (in-process: by the sweeper, with a metric
  and a log line; a shared store: by its TTL); its next chunk gets the clear error above;
- chunks of one stream are applied one at a time, in arrival order: in a worker, a chunk that
  arrives while another of its stream is in flight waits its turn; across workers (a shared store),
  every write is compare-and-set on the record it was computed from, so of two chunks computed at
  once only one applies and the other is computed again on the new state (never a forked state);
- bounds: ``streams.max_streams`` live streams (a START past it: 429 / RESOURCE_EXHAUSTED),
  ``streams.max_stream_steps`` timesteps per stream (a chunk past it: 422, state unchanged);
- a continuing chunk on a state written by another model version (a rolling update) is refused
  (400) instead of computing garbage; START begins afresh.

A chunk that fails or whose caller goes away before its state is written leaves the stream as it
was. With ``sequence_offset`` (the stream's timesteps before the chunk) a chunk applies exactly once:
a resend of the last applied chunk gets its answer again without applying it, a chunk behind the
stream is refused (400), one ahead of it gets a retryable 503 (docs/OPERATIONS.md, the retry rule)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

from rnnserve.bundle.signature import INPUT

from ..errors import InvalidInput, ServingError, StreamLimit, Unavailable, UnprocessableInput
from ..observability.metrics import MetricsSink
from ..settings import StreamSettings
from ..types import SequenceControl
from .clusterstore import RedisClusterStore
from .redisstore import RedisStore
from .state import State
from .streamstore import Key, MemoryStore, PutStatus, StoreUnavailable, StreamRecord, StreamStore

log = logging.getLogger("rnnserve.streams")

RunChunk = Callable[[np.ndarray, State | None], Awaitable[tuple[np.ndarray, State]]]
CONFLICT_ATTEMPTS = 4  # computations of one chunk while other workers keep changing its stream


class StreamManager:
    def __init__(self, settings: StreamSettings, model: str, version: str, state_bytes: int,
                 metrics: MetricsSink | None = None, store: StreamStore | None = None, field: str = INPUT) -> None:
        """``field``: the request field a chunk travels in (the signature's sequence input), for messages."""
        self.settings = settings
        self.model = model
        self.version = version
        self.state_bytes = state_bytes  # per stream
        self.field = field
        self.metrics = metrics or MetricsSink()  # the stream methods of it: a no-op sink by default
        self.store = store or MemoryStore()
        self._locks: dict[Key, list] = {}  # key -> [lock, holders and waiters]: streams in flight here
        self._sweeper: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None
        self._cached: OrderedDict[Key, StreamRecord] = OrderedDict()  # shared store: last record written here

    # ---- a chunk ----------------------------------------------------------------------------------

    async def chunk(self, control: SequenceControl, sequence: np.ndarray, run: RunChunk) -> tuple[np.ndarray, int]:
        """Apply ``sequence`` to its stream with ``run(sequence, state) -> (output row, new state)``;
        returns (output row on the whole prefix, the stream's timesteps so far)."""
        started = time.perf_counter()
        self._ensure_sweeping()
        key = control.key
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:  # one chunk of a stream at a time in this worker, in arrival order
                row, steps = await self._apply(control, sequence, run)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]
        self.metrics.chunk(time.perf_counter() - started)
        return row, steps

    async def _apply(self, control: SequenceControl, sequence: np.ndarray,
                     run: RunChunk) -> tuple[np.ndarray, int]:
        n = len(sequence)
        digest = _digest(sequence) if control.offset is not None else b""
        for attempt in range(CONFLICT_ATTEMPTS):
            # With a shared store the first attempt starts from the record this worker last wrote for
            # the stream, if it still has it: no read round trip. The write's compare-and-set (the
            # etag) rejects it if another worker changed the stream meanwhile, and a refusal is never
            # decided on it: both read the store again.
            record = self._cached.get(control.key) if attempt == 0 and not control.start else None
            cached = record is not None
            if record is None:
                record = await self._read(control)
            if record is not None and self._is_resend(record, control, n, digest):
                self.metrics.stream_event("replayed")
                return record.last_row, record.steps
            try:
                base, steps, seq, expected, live = self._base(control, record, n)
            except ServingError:
                if cached:
                    self._cached.pop(control.key, None)
                    continue
                raise
            row, state = await run(sequence, base)
            new = StreamRecord(None if control.end else state, steps + n, self.version, os.urandom(16), seq + 1,
                               control.end, steps, digest, np.asarray(row, np.float32))
            result = await self._write(control, new, expected)
            for _ in range(result.expired or 0):
                self.metrics.stream_event("expired")
            if result.status is PutStatus.OK:
                self._remember(control.key, None if control.end else new)
                self._count(control, live, result)
                return row, steps + n
            self._cached.pop(control.key, None)
            if result.status is PutStatus.LIMIT:
                raise self._limit(control)
            self.metrics.stream_event("conflict")  # changed by another worker meanwhile: read it again
        raise Unavailable(
            f"stream {control.shown()} was changed by other workers {CONFLICT_ATTEMPTS} times while this chunk was "
            f"computed (chunks of one stream sent at once over several connections?); the chunk was not applied: "
            f"resend it after the others are answered")

    def _base(self, control: SequenceControl, record: StreamRecord | None, n: int):
        """(initial state, steps so far, sequence number, expected etag, live record) for a chunk on
        ``record``; raises the refusal when the chunk cannot apply to it."""
        live = record if record is not None and record.live else None
        if live is None:
            if not control.start:
                raise self._needs_start(control)
            if not self.store.shared and self.store.live_count >= self.settings.max_streams:
                raise self._limit(control)
            base, steps, seq, expected = None, 0, 0, None
        else:
            if live.version != self.version and not control.start:
                raise self._other_version(control, live)
            base, steps, seq = (None, 0, 0) if control.start else (live.state, live.steps, live.seq)
            expected = live.etag
        if control.offset is not None and control.offset != steps:
            raise self._out_of_order(control, steps)
        if steps + n > self.settings.max_stream_steps:
            raise UnprocessableInput(
                f"stream {control.shown()} would reach {steps + n} timesteps; the limit is "
                f"{self.settings.max_stream_steps} (streams.max_stream_steps): end it and start a new one",
                self.field)
        return base, steps, seq, expected, live

    def _remember(self, key: Key, record: StreamRecord | None) -> None:
        """Keep the last record written for ``key`` (shared store only; bounded, oldest out)."""
        if not self.store.shared:
            return
        self._cached.pop(key, None)
        if record is not None:
            self._cached[key] = record
            while len(self._cached) > self.settings.max_streams:
                self._cached.popitem(last=False)

    def _is_resend(self, record: StreamRecord, control: SequenceControl, n: int, digest: bytes) -> bool:
        """The last chunk applied to this stream, sent again (only knowable with ``sequence_offset``)."""
        return (control.offset is not None and record.last_row is not None and record.last_offset == control.offset
                and record.steps == control.offset + n and record.last_digest == digest)

    def _count(self, control: SequenceControl, before: StreamRecord | None, result) -> None:
        if before is None:
            self.metrics.stream_event("started")
        elif control.start:
            self.metrics.stream_event("restarted")
        if control.end:
            self.metrics.stream_event("ended")
        self._report(result.live)

    # ---- the store, its failures as transport-neutral errors ------------------------------------

    async def _read(self, control: SequenceControl) -> StreamRecord | None:
        try:
            return await self.store.get(control.key)
        except StoreUnavailable as exc:
            raise Unavailable(f"stream store unavailable ({self.store.describe()}: {exc.reason}): stream "
                              f"{control.shown()} was not changed; retry the chunk") from exc
        except ValueError as exc:
            raise InvalidInput(f"the stored state of stream {control.shown()} cannot be read here ({exc}): restart "
                               f"the stream with START", "sequence_id") from exc

    async def _write(self, control: SequenceControl, record: StreamRecord, expected: bytes | None):
        try:
            return await self.store.put(control.key, record, expected, self.settings.max_streams)
        except StoreUnavailable as exc:
            self._cached.pop(control.key, None)  # the outcome is unknown: read the store next time
            raise Unavailable(
                f"stream store unavailable ({self.store.describe()}: {exc.reason}) while saving stream "
                f"{control.shown()}: the chunk may or may not have been applied; resend it with "
                f"sequence_offset={record.last_offset} to have it applied exactly once") from exc

    # ---- errors -----------------------------------------------------------------------------------

    def _needs_start(self, control: SequenceControl) -> InvalidInput:
        return InvalidInput(
            f"inference request for sequence {control.shown()} to model {self.model!r} must specify the START "
            f"flag on the first request of the sequence (no live stream with that id: it never started, "
            f"ended, or was idle for more than {self.settings.idle_timeout_s:g} s)", "sequence_id")

    def _limit(self, control: SequenceControl) -> StreamLimit:
        self.metrics.stream_event("refused")
        why = self.store.limit_phrase(control.key, self.settings.max_streams)
        return StreamLimit(f"cannot start stream {control.shown()}: {why}; end or let streams expire, then retry")

    def _other_version(self, control: SequenceControl, live: StreamRecord) -> InvalidInput:
        return InvalidInput(
            f"stream {control.shown()} holds state of model {self.model!r} version {live.version!r}, but this "
            f"server serves version {self.version!r} (a rolling update?): a state cannot continue on another "
            f"version; restart the stream with START", "sequence_id")

    def _out_of_order(self, control: SequenceControl, steps: int) -> InvalidInput | Unavailable:
        if control.offset > steps:  # the chunks before it are in flight elsewhere, or a store failover lost them
            return Unavailable(
                f"chunk of stream {control.shown()} starts at timestep {control.offset} (sequence_offset), but "
                f"the stream is at {steps}: the chunks before it are missing (still in flight, or lost by a store "
                f"failover); the chunk was not applied: send it after they are answered, or, if they were, resend "
                f"the stream's data from timestep {steps}")
        return InvalidInput(
            f"chunk of stream {control.shown()} starts at timestep {control.offset} (sequence_offset), but the "
            f"stream is at {steps}: it would apply out of order, and it is not the last applied chunk sent "
            f"again; send the chunk that starts at timestep {steps}", "sequence_offset")

    # ---- expiry (in-process store; a shared store expires streams by itself) ---------------------

    def expire(self, now: float | None = None) -> int:
        """Evict streams idle longer than the idle timeout; returns how many."""
        now = time.monotonic() if now is None else now
        evicted = self.store.expire(now - self.settings.idle_timeout_s, set(self._locks))
        for _ in range(evicted):
            self.metrics.stream_event("expired")
        if evicted:
            log.info("evicted %d stream(s) idle for more than %g s", evicted, self.settings.idle_timeout_s)
            self._report(self.store.live_count)
        return evicted

    def _ensure_sweeping(self) -> None:
        if self._sweeper is None and not self.store.shared:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="rnnserve-stream-expiry")

    async def _sweep(self) -> None:
        interval = min(self.settings.idle_timeout_s / 4, 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.expire()
            except Exception:  # never let the sweeper die
                log.exception("stream expiry failed; will retry")

    def _report(self, live: int | None) -> None:
        if live is None:
            return
        if self.store.shared:
            self.metrics.store_streams(live)
        else:
            self.metrics.streams_live(live, live * self.state_bytes)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._closing = loop.create_task(self.store.aclose())

    @property
    def live(self) -> int:
        """Live streams: in this worker (in-process store), or in the shared store as last seen."""
        return self.store.live_count


def _digest(sequence: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(sequence, np.float32).tobytes(), digest_size=16).digest()


def open_store(settings: StreamSettings, model: str, metrics: MetricsSink | None = None) -> StreamStore:
    """The store ``streams.store`` names, for ``model``'s streams. Connects lazily: a shared store
    that is unreachable makes stream chunks fail with 503 until it is back, and nothing else."""
    if settings.store == "memory":
        return MemoryStore()
    if settings.clustered:
        return RedisClusterStore(settings.store, model, ttl_s=settings.idle_timeout_s,
                                 timeout_s=settings.store_timeout_s, prefix=settings.store_prefix, metrics=metrics,
                                 shards=settings.store_shards)
    return RedisStore(settings.store, model, ttl_s=settings.idle_timeout_s, timeout_s=settings.store_timeout_s,
                      prefix=settings.store_prefix, metrics=metrics)
