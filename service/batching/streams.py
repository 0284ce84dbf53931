"""Streams: stateful sequences with Triton's sequence semantics, and the store that holds their state.

A stream is addressed by its ``SequenceControl.key``. Lifecycle (Triton's, where sound):

- a chunk with START creates the stream with a zero state, or restarts a live one;
- a chunk without START continues a live stream; for an unknown, ended or expired id it is refused
  (400 / INVALID_ARGUMENT) naming the id and saying the stream needs START;
- END answers the chunk, then frees the state;
- a stream idle for ``streams.idle_timeout_s`` is evicted (metric + log); its next chunk gets the
  clear error above;
- chunks of one stream are applied one at a time, in arrival order: a chunk that arrives while
  another of its stream is in flight waits its turn (never two of one stream in one step, never
  reordered);
- bounds: ``streams.max_streams`` live streams (a START past it: 429 / RESOURCE_EXHAUSTED),
  ``streams.max_stream_steps`` timesteps per stream (a chunk past it: 422, state unchanged).

A chunk that fails or whose caller goes away leaves the stream's state as it was: resending the
chunk is safe. The state lives behind ``StreamStore`` (in-process here; the interface is what a
shared store implements)."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInput, StreamLimit, UnprocessableInput
from ..settings import StreamSettings
from ..types import SequenceControl

log = logging.getLogger("rnnserve.streams")

State = tuple[np.ndarray, ...]  # one [H] float32 row per state tensor of the streaming graph
Key = tuple[str, int | str]
RunChunk = Callable[[np.ndarray, State | None], Awaitable[tuple[np.ndarray, State]]]


@dataclass
class StreamRecord:
    state: State | None  # None: zero (a stream that has just started)
    steps: int  # timesteps applied so far
    version: str  # the model version the state belongs to
    last_used: float  # time.monotonic()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class StreamStore(ABC):
    """Where stream state lives between chunks."""

    @abstractmethod
    def get(self, key: Key) -> StreamRecord | None: ...

    @abstractmethod
    def put(self, key: Key, record: StreamRecord) -> None: ...

    @abstractmethod
    def delete(self, key: Key) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def idle(self, before: float) -> list[Key]:
        """Streams last used before ``before`` and not in flight."""


class MemoryStore(StreamStore):
    """In-process (the default): state stays in the worker that holds the stream."""

    def __init__(self) -> None:
        self._records: dict[Key, StreamRecord] = {}

    def get(self, key: Key) -> StreamRecord | None:
        return self._records.get(key)

    def put(self, key: Key, record: StreamRecord) -> None:
        self._records[key] = record

    def delete(self, key: Key) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)

    def idle(self, before: float) -> list[Key]:
        return [k for k, r in self._records.items() if r.last_used < before and not r.lock.locked()]


class StreamMetrics:
    """What the stream manager reports (``observability.metrics.Metrics`` implements it)."""

    def stream_event(self, event: str) -> None:
        """started / restarted / ended / expired / refused"""

    def streams_live(self, count: int, state_bytes: int) -> None:
        """Streams held now and the bytes of their state."""

    def chunk(self, seconds: float) -> None:
        """One chunk answered after ``seconds``."""


class StreamManager:
    def __init__(self, settings: StreamSettings, model: str, version: str, state_bytes: int,
                 metrics: StreamMetrics | None = None, store: StreamStore | None = None) -> None:
        self.settings = settings
        self.model = model
        self.version = version
        self.state_bytes = state_bytes  # per stream
        self.metrics = metrics or StreamMetrics()
        self.store = store or MemoryStore()
        self._sweeper: asyncio.Task | None = None

    # ---- a chunk ----------------------------------------------------------------------------------

    async def chunk(self, control: SequenceControl, sequence: np.ndarray, run: RunChunk) -> tuple[np.ndarray, int]:
        """Apply ``sequence`` to its stream with ``run(sequence, state) -> (output row, new state)``;
        returns (output row on the whole prefix, the stream's timesteps so far)."""
        started = time.perf_counter()
        self._ensure_sweeping()
        while True:
            record = self._open(control)
            async with record.lock:  # one chunk of a stream at a time, in arrival order
                if self.store.get(control.key) is not record:  # ended or expired while this chunk waited
                    if control.start:
                        continue  # a START opens it again
                    raise self._needs_start(control)
                row, steps = await self._apply(control, record, sequence, run)
            break
        self._report()
        self.metrics.chunk(time.perf_counter() - started)
        return row, steps

    async def _apply(self, control: SequenceControl, record: StreamRecord, sequence: np.ndarray,
                     run: RunChunk) -> tuple[np.ndarray, int]:
        if control.start and record.steps:  # START on a live stream restarts it
            record.state, record.steps = None, 0
            self.metrics.stream_event("restarted")
        if record.steps + len(sequence) > self.settings.max_stream_steps:
            raise UnprocessableInput(
                f"stream {control.shown()} would reach {record.steps + len(sequence)} timesteps; the limit is "
                f"{self.settings.max_stream_steps} (streams.max_stream_steps): end it and start a new one",
                "input")
        row, state = await run(sequence, record.state)
        record.state, record.steps = state, record.steps + len(sequence)
        record.last_used = time.monotonic()
        if control.end:
            self.store.delete(control.key)
            self.metrics.stream_event("ended")
        return row, record.steps

    def _open(self, control: SequenceControl) -> StreamRecord:
        record = self.store.get(control.key)
        if record is not None:
            return record
        if not control.start:
            raise self._needs_start(control)
        if len(self.store) >= self.settings.max_streams:
            self.metrics.stream_event("refused")
            raise StreamLimit(
                f"cannot start stream {control.shown()}: {len(self.store)} streams are live, the limit is "
                f"{self.settings.max_streams} (streams.max_streams); end or let streams expire, then retry")
        record = StreamRecord(None, 0, self.version, time.monotonic())
        self.store.put(control.key, record)
        self.metrics.stream_event("started")
        self._report()
        return record

    def _needs_start(self, control: SequenceControl) -> InvalidInput:
        return InvalidInput(
            f"inference request for sequence {control.shown()} to model {self.model!r} must specify the START "
            f"flag on the first request of the sequence (no live stream with that id: it never started, "
            f"ended, or was idle for more than {self.settings.idle_timeout_s:g} s)", "sequence_id")

    # ---- expiry -----------------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Evict streams idle longer than the idle timeout; returns how many."""
        now = time.monotonic() if now is None else now
        keys = self.store.idle(now - self.settings.idle_timeout_s)
        for key in keys:
            self.store.delete(key)
            self.metrics.stream_event("expired")
        if keys:
            shown = ", ".join(repr(k[1]) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
            log.info("evicted %d stream(s) idle for more than %g s: %s", len(keys), self.settings.idle_timeout_s,
                     shown)
            self._report()
        return len(keys)

    def _ensure_sweeping(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="rnnserve-stream-expiry")

    async def _sweep(self) -> None:
        interval = min(self.settings.idle_timeout_s / 4, 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                self.expire()
            except Exception:  # never let the sweeper die
                log.exception("stream expiry failed; will retry")

    def _report(self) -> None:
        live = len(self.store)
        self.metrics.streams_live(live, live * self.state_bytes)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    @property
    def live(self) -> int:
        return len(self.store)
