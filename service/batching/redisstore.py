"""The shared stream store: Redis (``streams.store=redis://host:port/db``), through redis-py's asyncio
client.

Layout, per model (``{prefix}:{<model>}:`` ; the braces are a Redis Cluster hash tag, so a model's keys
share a slot):

- ``...:i:<id>`` / ``...:s:<id>`` (integer / string ids): one string per stream, ``encode``'s bytes:
  a header (format, etag, flags, sequence number, steps, the last chunk's offset), the model version,
  the last chunk's digest and answer row, and the state as raw float32 rows. Its TTL is the idle
  timeout, renewed by every write: expiry across workers and replicas is Redis's job.
- ``...:live``: a sorted set of the live streams' keys scored by expiry time (ms, Redis's clock): what
  ``streams.max_streams`` counts, store-wide.

Writes are compare-and-set in one Lua script (``PUT``): it applies only if the stored etag is the one
the chunk was computed from, or, for a new stream, if none is live and fewer than ``max_live`` are.

Round trips: all reads and writes queued while no round trip is in flight (the chunks of an
iteration, whose answers arrive together) go out as one pipeline: one ``MGET`` for every read and one
``EVALSHA`` per write. So a round trip carries any number of streams, and an iteration costs O(1)
round trips, not O(streams). Every round trip has a deadline (``streams.store_timeout_s``) and is never
retried by the client library (a retried write could apply twice); failures reach the waiting chunks
as ``StoreUnavailable``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
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
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class RedisStore(StreamStore):
    shared = True

    def __init__(self, url: str, model: str, ttl_s: float, timeout_s: float, prefix: str = "rnnserve",
                 metrics=None, max_connections: int = 4) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no retries: a retried EVALSHA after a lost reply could apply a chunk twice
        self._client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      retry=Retry(NoBackoff(), 0), max_connections=max_connections)
        self.url = shown_url(url)
        self._base = f"{prefix}:{{{model}}}:".encode()
        self._live_key = self._base + b"live"
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s
        self._metrics = metrics
        self._reads: dict[bytes, list[asyncio.Future]] = {}
        self._writes: list[tuple[bytes, bytes, bytes, bool, int, asyncio.Future]] = []
        self._scheduled = False
        self._flusher: asyncio.Task | None = None
        self._down: str | None = None  # the reason, while the store is unreachable (logged once)
        self.round_trips = 0  # pipelines sent (what an iteration costs)
        self.operations = 0  # reads and writes they carried

    def describe(self) -> str:
        return f"Redis at {self.url}"

    def key(self, key: Key) -> bytes:
        kind, sid = key
        return self._base + (b"i:" if kind == "int" else b"s:") + str(sid).encode()

    # ---- the interface: queue, then await the coalesced round trip -------------------------------

    async def get(self, key: Key) -> StreamRecord | None:
        future = asyncio.get_running_loop().create_future()
        self._reads.setdefault(self.key(key), []).append(future)
        self._kick()
        raw = await future
        return None if raw is None else decode(raw)  # ValueError: not a record this server wrote

    async def put(self, key: Key, record: StreamRecord, expected: bytes | None, max_live: int) -> PutResult:
        future = asyncio.get_running_loop().create_future()
        self._writes.append((self.key(key), encode(record), expected or b"", record.ended, max_live, future))
        self._kick()
        code, live, expired = await future
        self.live_count = int(live)
        status = PutStatus.OK if code == 1 else PutStatus.LIMIT if code == -1 else PutStatus.CONFLICT
        return PutResult(status, int(live), int(expired))

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

    async def _round_trip(self, reads: dict[bytes, list[asyncio.Future]], writes: list) -> None:
        from redis.exceptions import NoScriptError, RedisError

        keys = list(reads)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._send(keys, writes)
                missing = [i for i, r in enumerate(results[1 if keys else 0 :]) if isinstance(r, NoScriptError)]
                if missing:  # a restarted Redis has lost the script: load it, send those writes again
                    await self._client.script_load(PUT)
                    again = await self._send([], [writes[i] for i in missing])
                    offset = 1 if keys else 0
                    results = list(results)
                    for i, r in zip(missing, again, strict=True):
                        results[offset + i] = r
        except (RedisError, OSError, TimeoutError) as exc:
            self._fail(reads, writes, *_reason(exc, self._timeout))
            return
        if self._down is not None:
            log.warning("stream store %s is reachable again", self.url)
            self._down = None
        self.round_trips += 1
        self.operations += len(keys) + len(writes)
        if self._metrics is not None:
            self._metrics.store_round_trip(len(keys), len(writes), time.perf_counter() - started)
        at = 0
        if keys:
            values = results[0]
            if isinstance(values, Exception):
                self._fail(reads, [], *_reason(values, self._timeout))
            else:
                for k, value in zip(keys, values, strict=True):
                    for f in reads[k]:
                        if not f.done():
                            f.set_result(value)
            at = 1
        for w, r in zip(writes, results[at:], strict=True):
            f = w[5]
            if f.done():
                continue
            if isinstance(r, Exception):
                f.set_exception(StoreUnavailable(_reason(r, self._timeout)[1]))
            else:
                f.set_result(r)

    async def _send(self, keys: list[bytes], writes: list) -> list:
        pipe = self._client.pipeline(transaction=False)
        if keys:
            pipe.mget(keys)
        for key, value, expected, ended, max_live, _ in writes:
            pipe.evalsha(PUT_SHA, 2, key, self._live_key, expected, value, self._ttl_ms, "1" if ended else "0",
                         max_live)
        return await pipe.execute(raise_on_error=False)

    def _fail(self, reads: dict, writes: list, label: str, reason: str) -> None:
        if self._down != reason:
            log.warning("stream store %s: %s (stream chunks get 503 until it answers)", self.url, reason)
            self._down = reason
        if self._metrics is not None:
            self._metrics.store_error(label)
        error = StoreUnavailable(reason)
        for futures in reads.values():
            for f in futures:
                if not f.done():
                    f.set_exception(error)
        for w in writes:
            if not w[5].done():
                w[5].set_exception(error)


def _reason(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(metric label, phrase for the message) of a failed round trip."""
    from redis.exceptions import BusyLoadingError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout", f"no answer within {timeout:g} s (streams.store_timeout_s)"
    if isinstance(exc, BusyLoadingError):
        return "loading", "still loading its data set"
    if isinstance(exc, RedisConnectionError | OSError):
        return "unreachable", "unreachable"
    if isinstance(exc, ResponseError):
        return "error", f"error {str(exc).splitlines()[0][:200]}"
    return "error", f"error {type(exc).__name__}"
