"""The shared stream store on one Redis primary (``streams.store=redis://host:port/db``), through
redis-py's asyncio client; and what its Redis Cluster twin (``clusterstore``) shares with it: the record's
bytes (``encode`` / ``decode``, the one place the stored format is written), the compare-and-set script,
and the coalesced round trips.

Layout, per model (``{prefix}:{<model>}:`` ; the braces are a Redis Cluster hash tag: on one primary a
model's keys share it; the cluster store gives each shard of a model a tag of its own):

- ``...:i:<id>`` / ``...:s:<id>`` (integer / string ids): one string per stream, ``encode``'s bytes:
  a header (format, etag, flags, sequence number, steps, the last chunk's offset), the model version,
  the last chunk's digest and answer row, and the state as raw float32 rows. Its TTL is the idle
  timeout, renewed by every write: expiry across workers and replicas is Redis's job.
- ``...:live``: a sorted set of the live streams' keys scored by expiry time (ms, Redis's clock): what
  ``streams.max_streams`` counts, store-wide (in a cluster: one per shard, each holding its share).

Writes are compare-and-set in one Lua script (``PUT``): it applies only if the stored etag is the one
the chunk was computed from, or, for a new stream, if none is live and fewer than the limit are.

Round trips: all reads and writes queued while no round trip is in flight (the chunks of an
iteration, whose answers arrive together) go out as one pipeline: one ``MGET`` for every read and one
``EVALSHA`` per write (``_exchange``; the cluster store sends one pipeline per primary, at once). So a
round trip carries any number of streams, and an iteration costs O(1) round trips, not O(streams). Every
round trip has a deadline (``streams.store_timeout_s``) and is never retried by the client library (a
retried write could apply twice); failures reach the waiting chunks as ``StoreUnavailable``. A write
refused with NOSCRIPT (a restarted Redis, a promoted replica: not applied) is sent again as ``EVAL``,
which loads the script there."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np

from .streamstore import Key, PutResult, PutStatus, StoreUnavailable, StreamRecord, StreamStore

log = logging.getLogger("rnnserve.streams")

FORMAT = 1
HEAD = struct.Struct(">B16sBQQq")  # format, etag, flags (bit 0: ended), seq, steps, last_offset
ENDED = 1

# KEYS[1] the stream, KEYS[2] the live set; ARGV: expected etag ('' = no live stream may exist), the new
# value, TTL ms, '1' if the value ends the stream, max live streams (for a new one).
# Returns {1 ok | 0 conflict | -1 limit, live streams, streams found expired}.
PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local head = redis.call('GETRANGE', KEYS[1], 0, 17)
local live = string.len(head) == 18 and string.byte(head, 18) % 2 == 0
if ARGV[1] == '' then
  if live then return {0, redis.call('ZCARD', KEYS[2]), expired} end
  if ARGV[4] ~= '1' and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    return {-1, redis.call('ZCARD', KEYS[2]), expired}
  end
elseif not live or string.sub(head, 2, 17) ~= ARGV[1] then
  return {0, redis.call('ZCARD', KEYS[2]), expired}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), KEYS[1])
end
return {1, redis.call('ZCARD', KEYS[2]), expired}
"""
PUT_SHA = hashlib.sha1(PUT.encode()).hexdigest()


def encode(record: StreamRecord) -> bytes:
    version = record.version.encode()
    row = b"" if record.last_row is None else np.ascontiguousarray(record.last_row, np.float32).tobytes()
    rows = record.state or ()
    parts = [HEAD.pack(FORMAT, record.etag, ENDED if record.ended else 0, record.seq, record.steps,
                       record.last_offset),
             struct.pack(">H", len(version)), version, struct.pack(">B", len(record.last_digest)), record.last_digest,
             struct.pack(">I", len(row)), row, struct.pack(">B", len(rows))]
    for r in rows:
        raw = np.ascontiguousarray(r, np.float32).tobytes()
        parts += [struct.pack(">I", len(raw)), raw]
    return b"".join(parts)


def decode(raw: bytes) -> StreamRecord:
    """The record ``encode`` wrote; ValueError for bytes it did not write."""
    try:
        fmt, etag, flags, seq, steps, last_offset = HEAD.unpack_from(raw, 0)
        if fmt != FORMAT:
            raise ValueError(f"stored stream format {fmt}, this server reads format {FORMAT}")
        at = HEAD.size

        def take(fmt_: str):
            nonlocal at
            (n,) = struct.unpack_from(fmt_, raw, at)
            at += struct.calcsize(fmt_)
            value = raw[at : at + n]
            if len(value) != n:
                raise ValueError("truncated stream record")
            at += n
            return value

        version = take(">H").decode()
        digest = take(">B")
        row = take(">I")
        (count,) = struct.unpack_from(">B", raw, at)
        at += 1
        state = tuple(np.frombuffer(take(">I"), np.float32) for _ in range(count))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable stream record ({exc})") from exc
    return StreamRecord(state or None, steps, version, etag, seq, bool(flags & ENDED), last_offset, digest,
                        np.frombuffer(row, np.float32) if row else None)


def shown_url(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    if parts.scheme.endswith("-cluster"):
        hosts = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{hosts}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def id_part(key: Key) -> bytes:
    """A stream's id as its Redis key ends: ``i:<id>`` or ``s:<id>``."""
    kind, sid = key
    return (b"i:" if kind == "int" else b"s:") + str(sid).encode()


class Write(NamedTuple):
    key: bytes  # the stream
    live: bytes  # the live set the write updates (same hash tag)
    value: bytes
    expected: bytes  # b"": no live stream may exist
    ended: bool
    limit: int  # live streams that set may hold (for a new stream)
    future: asyncio.Future


@dataclass(frozen=True, slots=True)
class Failed:
    """An operation of a round trip that did not complete: a metric label and a phrase for messages."""

    label: str
    reason: str
    noscript: bool = False  # the node had not loaded the script: not applied, send it as EVAL


class RedisStore(StreamStore):
    shared = True

    def __init__(self, url: str, model: str, ttl_s: float, timeout_s: float, prefix: str = "rnnserve",
                 metrics=None, max_connections: int = 4) -> None:
        self._client = self._connect(url, timeout_s, max_connections)
        self.url = shown_url(url)
        self._base = f"{prefix}:{{{model}}}:".encode()
        self._live_key = self._base + b"live"
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        self._metrics = metrics
        self._reads: dict[bytes, list[asyncio.Future]] = {}
        self._writes: list[Write] = []
        self._scheduled = False
        self._flusher: asyncio.Task | None = None
        self._down: str | None = None  # the reason, while the store is unreachable (logged once)
        self.round_trips = 0  # pipelines sent (what an iteration costs)
        self.operations = 0  # reads and writes they carried

    @staticmethod
    def _connect(url: str, timeout_s: float, max_connections: int):
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no retries: a retried EVALSHA after a lost reply could apply a chunk twice
        return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                              retry=Retry(NoBackoff(), 0), max_connections=max_connections)

    def describe(self) -> str:
        return f"Redis at {self.url}"

    def key(self, key: Key) -> bytes:
        return self._base + id_part(key)

    def _place(self, key: Key) -> tuple[bytes, bytes, int]:
        """(the stream's key, the live set its writes update, the shard: 0 on one primary)."""
        return self.key(key), self._live_key, 0

    def _capacity(self, shard: int, max_live: int) -> int:
        """How many live streams ``shard``'s live set may hold."""
        return max_live

    def _saw_live(self, shard: int, live: int) -> int:
        """A write saw ``live`` streams in ``shard``'s live set: the store's live count now."""
        return live

    # ---- the interface: queue, then await the coalesced round trip -------------------------------

    async def get(self, key: Key) -> StreamRecord | None:
        future = asyncio.get_running_loop().create_future()
        self._reads.setdefault(self.key(key), []).append(future)
        self._kick()
        raw = await future
        return None if raw is None else decode(raw)  # ValueError: not a record this server wrote

    async def put(self, key: Key, record: StreamRecord, expected: bytes | None, max_live: int) -> PutResult:
        future = asyncio.get_running_loop().create_future()
        stream, live_key, shard = self._place(key)
        self._writes.append(Write(stream, live_key, encode(record), expected or b"", record.ended,
                                  self._capacity(shard, max_live), future))
        self._kick()
        code, live, expired = await future
        self.live_count = self._saw_live(shard, int(live))
        status = PutStatus.OK if code == 1 else PutStatus.LIMIT if code == -1 else PutStatus.CONFLICT
        return PutResult(status, self.live_count, int(expired))

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- coalescing ---------------------------------------------------------------------------------

    def _kick(self) -> None:
        """Send what is queued once the current tick has queued all it will (one flush at a time:
        what arrives during a round trip goes in the next one)."""
        if not self._scheduled and self._flusher is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="rnnserve-stream-store")

    async def _flush(self) -> None:
        try:
            while self._reads or self._writes:
                reads, self._reads = self._reads, {}
                writes, self._writes = self._writes, []
                await self._round_trip(reads, writes)
        finally:
            self._flusher = None

    async def _round_trip(self, reads: dict[bytes, list[asyncio.Future]], writes: list[Write]) -> None:
        keys = list(reads)
        started = time.perf_counter()
        results = await self._exchange(keys, writes, script=False)
        again = [i for i, r in enumerate(results[len(keys):]) if isinstance(r, Failed) and r.noscript]
        if again:  # a restarted Redis or a promoted replica has not loaded the script: EVAL loads it
            redo = await self._exchange([], [writes[i] for i in again], script=True)
            for i, r in zip(again, redo, strict=True):
                results[len(keys) + i] = r
        self._account(len(keys), len(writes), results, time.perf_counter() - started)
        for k, r in zip(keys, results[: len(keys)], strict=True):
            for f in reads[k]:
                _deliver(f, r)
        for w, r in zip(writes, results[len(keys):], strict=True):
            _deliver(w.future, r)

    async def _exchange(self, keys: list[bytes], writes: list[Write], script: bool) -> list:
        """One pipeline: the values of ``keys``, then the replies of ``writes``, in order; an operation
        that failed is a ``Failed``."""
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                pipe = self._client.pipeline(transaction=False)
                if keys:
                    pipe.mget(keys)
                for w in writes:
                    self._queue_write(pipe, w, script)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            return [failed(exc, self._timeout)] * (len(keys) + len(writes))
        out = unpack_reads(replies[0], len(keys), self._timeout) if keys else []
        return out + [failed(r, self._timeout) if isinstance(r, Exception) else r for r in replies[1 if keys else 0:]]

    def _queue_write(self, pipe, w: Write, script: bool) -> None:
        # execute_command: redis-py's cluster pipeline blocks its eval/evalsha helpers (same wire command)
        pipe.execute_command("EVAL" if script else "EVALSHA", PUT if script else PUT_SHA, 2, w.key, w.live, w.expected,
                             w.value, self._ttl_ms, "1" if w.ended else "0", w.limit)

    def _account(self, reads: int, writes: int, results: list, seconds: float) -> None:
        """Metrics and the one log line per change of the store's health, for one round trip."""
        failures = {r.reason: r.label for r in results if isinstance(r, Failed)}
        if sum(isinstance(r, Failed) for r in results) < len(results):  # something went through
            self.round_trips += 1
            self.operations += reads + writes
            if self._metrics is not None:
                self._metrics.store_round_trip(reads, writes, seconds)
        for label in failures.values():
            if self._metrics is not None:
                self._metrics.store_error(label)
        if failures:
            reason = next(iter(failures))
            if self._down != reason:
                log.warning("stream store %s: %s (stream chunks get 503 until it answers)", self.url, reason)
                self._down = reason
        elif self._down is not None:
            log.warning("stream store %s is reachable again", self.url)
            self._down = None


def _deliver(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, Failed):
        future.set_exception(StoreUnavailable(result.reason))
    else:
        future.set_result(result)


def unpack_reads(reply, count: int, timeout: float) -> list:
    """An ``MGET`` reply as one result per key (a failed ``MGET`` fails each of them)."""
    if isinstance(reply, Exception):
        return [failed(reply, timeout)] * count
    return list(reply)


def failed(exc: BaseException, timeout: float, where: str = "") -> Failed:
    from redis.exceptions import NoScriptError

    label, phrase = _reason(exc, timeout)
    return Failed(label, where + phrase, isinstance(exc, NoScriptError))


def _reason(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(metric label, phrase for the message) of a failed round trip."""
    from redis.exceptions import BusyLoadingError, ClusterDownError, RedisClusterException, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout", f"no answer within {timeout:g} s (streams.store_timeout_s)"
    if isinstance(exc, BusyLoadingError):
        return "loading", "still loading its data set"
    if isinstance(exc, RedisConnectionError | OSError):
        return "unreachable", "unreachable"
    if isinstance(exc, ClusterDownError):  # a primary failed, no replica has taken its slots over yet
        return "cluster_down", f"cluster down ({str(exc).splitlines()[0][:200]})"
    if isinstance(exc, RedisClusterException):  # no node answered, or a slot no node serves
        return "cluster_down", f"cluster unavailable ({str(exc).splitlines()[0][:200]})"
    if isinstance(exc, ResponseError):
        return "error", f"error {str(exc).splitlines()[0][:200]}"
    return "error", f"error {type(exc).__name__}"
