"""Where stream state lives between chunks: the ``StreamStore`` interface, the record it holds, the
in-process store, and the one factory that picks a store from the settings.

A store is a compare-and-set map from a stream's key to its ``StreamRecord``. Every write carries
the ``etag`` of the record it was computed from (None: no live stream may exist) and applies only if
that is still the stored one, so two chunks of one stream computed at two workers at once can never
both apply: the second gets ``CONFLICT`` and the stream manager reads the stream again. A record is
never changed in place; each write stores a new one with a new etag.

- ``MemoryStore`` (``streams.store=memory``, the default): a dict in the worker. The stream manager's
  sweeper evicts idle streams.
- ``RedisStore`` (``streams.store=redis://...``, ``redisstore``): shared by every worker and replica;
  streams expire by Redis TTL.
- ``RedisClusterStore`` (``streams.store=redis-cluster://...``, ``clusterstore``): the same over a Redis
  Cluster, a model's streams spread over shards (hash tags) and so over every primary; the live-stream
  limit is split into per-shard budgets.

``streams.open_store`` picks one from the settings.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .state import State

Key = tuple[str, int | str]  # SequenceControl.key


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """A stream as stored after a chunk: its state and what is needed to answer a resent chunk."""

    state: State | None  # None: zero, or freed (an ended stream)
    steps: int  # timesteps applied since START
    version: str  # the model version the state belongs to
    etag: bytes  # new with every write: the compare-and-set token
    seq: int  # chunks applied since START (the stream's sequence number)
    ended: bool = False  # END applied: kept only to answer a resend of the END chunk
    last_offset: int = -1  # the last applied chunk: timesteps before it (-1: not recorded) ...
    last_digest: bytes = b""  # ... a digest of its data ...
    last_row: np.ndarray | None = None  # ... and its answer

    @property
    def live(self) -> bool:
        return not self.ended


class PutStatus(enum.Enum):
    OK = "ok"
    CONFLICT = "conflict"  # the stored record is not the one the write was computed from
    LIMIT = "limit"  # a new stream, but the store holds max_live live streams


@dataclass(frozen=True, slots=True)
class PutResult:
    status: PutStatus
    live: int | None = None  # live streams in the store after the write, when the store says
    expired: int = 0  # streams the store found expired while writing (shared stores)


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time; ``reason`` is one short phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamStore(ABC):
    shared = False  # True: other workers see the same streams, and the store expires idle ones itself
    live_count = 0  # live streams, as last known (exact for the in-process store)

    @abstractmethod
    async def get(self, key: Key) -> StreamRecord | None:
        """The stored record (live or ended), or None; raises StoreUnavailable."""

    @abstractmethod
    async def put(self, key: Key, record: StreamRecord, expected: bytes | None, max_live: int) -> PutResult:
        """Store ``record`` if the stored record's etag is ``expected`` (None: if no live record is
        stored, and only while fewer than ``max_live`` streams are live). Raises StoreUnavailable,
        after which the write may or may not have been applied."""

    def expire(self, before: float, busy: set[Key]) -> int:
        """Evict records last written before ``before`` (time.monotonic()), except ``busy`` ones;
        returns how many live streams were evicted. Shared stores expire by themselves: 0."""
        return 0

    async def aclose(self) -> None:  # noqa: B027 - nothing to release for most stores
        """Release connections."""

    def describe(self) -> str:
        return "in-process"

    def limit_phrase(self, key: Key, max_live: int) -> str:
        """Why a new stream ``key`` was refused: what counts against ``max_live``, for the 429's message."""
        where = "in the shared stream store" if self.shared else "in this worker"
        return f"{self.live_count} streams are live {where}, the limit is {max_live} (streams.max_streams)"

    def holds(self, key: Key) -> bool:
        """Whether this process knows, without a round trip, that ``key`` is a live stream here
        (routing of continuing chunks during a version rollout; a shared store answers False)."""
        return False


class MemoryStore(StreamStore):
    """In-process (the default): state stays in the worker that holds the stream."""

    def __init__(self) -> None:
        self._records: dict[Key, tuple[StreamRecord, float]] = {}  # record, time.monotonic() of its write

    async def get(self, key: Key) -> StreamRecord | None:
        entry = self._records.get(key)
        return None if entry is None else entry[0]

    def holds(self, key: Key) -> bool:
        entry = self._records.get(key)
        return entry is not None and entry[0].live

    async def put(self, key: Key, record: StreamRecord, expected: bytes | None, max_live: int) -> PutResult:
        entry = self._records.get(key)
        current = None if entry is None else entry[0]
        if expected is None:
            if current is not None and current.live:
                return PutResult(PutStatus.CONFLICT, self.live_count)
            if record.live and self.live_count >= max_live:
                return PutResult(PutStatus.LIMIT, self.live_count)
        elif current is None or not current.live or current.etag != expected:
            return PutResult(PutStatus.CONFLICT, self.live_count)
        self.live_count += int(record.live) - int(current is not None and current.live)
        self._records[key] = (record, time.monotonic())
        return PutResult(PutStatus.OK, self.live_count)

    def expire(self, before: float, busy: set[Key]) -> int:
        idle = [k for k, (_, used) in self._records.items() if used < before and k not in busy]
        evicted = 0
        for key in idle:
            record, _ = self._records.pop(key)
            evicted += int(record.live)
        self.live_count -= evicted
        return evicted

    def __len__(self) -> int:
        return len(self._records)
