"""The shared stream store on a Redis Cluster (``streams.store=redis-cluster://host:port[,host:port...]``,
``rediss-cluster://`` for TLS), through redis-py's asyncio cluster client: ``RedisStore``'s records,
script and coalesced round trips, with a model's streams spread over ``streams.store_shards`` shards.

Layout: shard ``s`` of model ``m`` has the hash tag ``{m/<shards>/<c>}`` (``shard_tags``: ``c`` is chosen
so that the tag's slot lies in the s-th of ``shards`` equal slot ranges, so with the even contiguous slot
ranges that ``redis-cli --cluster create`` and the managed services give, the shards, their streams,
their memory and their load split evenly over the primaries). A stream belongs to the shard its id
hashes to (``shard_of``); its key and its shard's live set share the tag, so the compare-and-set script
stays one atomic script on one primary. The shard count is in the tag: deployments with different
``store_shards`` never share a stream (no fork; a continuing chunk gets the START error instead).

``streams.max_streams`` is split into per-shard budgets, shard ``s`` holding at most
``max_streams // shards`` (+1 for the first ``max_streams % shards`` shards): the budgets add up to
``max_streams``, so the store never holds more live streams than that, exactly as on one primary, while
idle expiry, END and each shard's live set stay exact. The price: a START is refused (429) when *its*
shard is full, which can happen before the whole store is (docs/OPERATIONS.md gives how early).

Round trips: the queued reads (one ``MGET`` per slot) and writes are grouped by the primary that serves
their slot, and each primary gets one pipeline, all sent at once with a deadline each: a primary that is
down or slow fails only its own streams' chunks (503), the others' go through. MOVED / ASK (resharding,
a failover seen by a node first) are followed by redis-py; after a connection failure or CLUSTERDOWN the
slot map is read again (from another node first) before the next round trip, so once a replica is
promoted its slots are served again without a restart. Nothing is retried by the client library."""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import time
from urllib.parse import urlsplit

from ..settings import cluster_node_urls
from .redisstore import Failed, RedisStore, Write, failed, id_part, unpack_reads
from .streamstore import Key

SLOTS = 16384  # Redis Cluster's hash slots
REFRESH_EVERY_S = 0.1  # at most this often, the slot map read again while a node keeps failing


def slot_of(tag: bytes) -> int:
    """The hash slot of a key whose hash tag is ``tag`` (Redis Cluster: CRC16/XMODEM mod 16384)."""
    return binascii.crc_hqx(tag, 0) % SLOTS


def shard_tags(model: str, shards: int) -> list[str]:
    """One hash tag per shard of ``model``, the s-th in the s-th of ``shards`` equal slot ranges."""
    tags: list[str | None] = [None] * shards
    missing, c = shards, 0
    while missing:
        tag = f"{model}/{shards}/{c}"
        s = slot_of(tag.encode()) * shards // SLOTS
        if tags[s] is None:
            tags[s] = tag
            missing -= 1
        c += 1
    return tags


def shard_of(key: Key, shards: int) -> int:
    """The shard a stream belongs to, from its id alone (the same in every worker and replica)."""
    return int.from_bytes(hashlib.blake2b(id_part(key), digest_size=8).digest(), "big") % shards


class RedisClusterStore(RedisStore):
    def __init__(self, url: str, model: str, ttl_s: float, timeout_s: float, prefix: str = "rnnserve",
                 metrics=None, max_connections: int = 4, shards: int = 48) -> None:
        super().__init__(url, model, ttl_s, timeout_s, prefix, metrics, max_connections)
        self.shards = shards
        self._bases = [f"{prefix}:{{{tag}}}:".encode() for tag in shard_tags(model, shards)]
        self._shard_live = [0] * shards  # each shard's live streams, as this worker's last write there saw
        self._stale = False  # a node failed: read the slot map again before the next round trip ...
        self._failed_node: str | None = None  # ... asking the others first
        self._refreshed = 0.0

    @staticmethod
    def _connect(url: str, timeout_s: float, max_connections: int):
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        first, *others = cluster_node_urls(url)
        nodes = [ClusterNode(p.hostname, p.port or 6379) for p in map(urlsplit, others)]
        # no retries (a retried EVALSHA after a lost reply could apply a chunk twice); a partial slot map
        # is usable (a failed primary's slots fail alone); a MOVED updates its slot only (the whole map is
        # read again after failures, by _refresh, never by closing the connections other primaries'
        # pipelines are using)
        return RedisCluster.from_url(first, startup_nodes=nodes or None, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
                                     max_connections=max_connections, require_full_coverage=False,
                                     reinitialize_steps=0)

    def describe(self) -> str:
        return f"Redis Cluster at {self.url}"

    def key(self, key: Key) -> bytes:
        return self._bases[shard_of(key, self.shards)] + id_part(key)

    def _place(self, key: Key) -> tuple[bytes, bytes, int]:
        shard = shard_of(key, self.shards)
        return self._bases[shard] + id_part(key), self._bases[shard] + b"live", shard

    def _capacity(self, shard: int, max_live: int) -> int:
        return max_live // self.shards + int(shard < max_live % self.shards)

    def _saw_live(self, shard: int, live: int) -> int:
        self._shard_live[shard] = live
        return sum(self._shard_live)

    def limit_phrase(self, key: Key, max_live: int) -> str:
        shard = shard_of(key, self.shards)
        return (f"its shard ({shard + 1} of {self.shards}, streams.store_shards) holds "
                f"{self._shard_live[shard]} live streams, its share of the limit {max_live} "
                f"(streams.max_streams: {self._capacity(shard, max_live)} per shard; about {self.live_count} are "
                f"live in the whole store)")

    # ---- round trips: one pipeline per primary, at once --------------------------------------------

    async def _exchange(self, keys: list[bytes], writes: list[Write], script: bool) -> list:
        from redis.exceptions import RedisClusterException, RedisError

        results: list = [None] * (len(keys) + len(writes))
        try:
            async with asyncio.timeout(self._timeout):
                await self._refresh()
                await self._client.initialize()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self._stale = True
            return [failed(exc, self._timeout)] * len(results)
        plan = self._plan(keys, writes, results)
        outcomes = await asyncio.gather(*(self._send(ops, script) for ops in plan.values()), return_exceptions=True)
        for (node, ops), outcome in zip(plan.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                self._stale, self._failed_node = True, node
                replies = [failed(outcome, self._timeout, f"primary {node}: ")] * len(ops)
            else:
                replies = outcome
            for (indices, read, _), reply in zip(ops, replies, strict=True):
                self._place_replies(results, indices, read is not None, reply, node)
        return results

    def _plan(self, keys: list[bytes], writes: list[Write], results: list) -> dict[str, list]:
        """{node name: [(result indices, read keys | None, write | None)]}: one ``MGET`` per slot, one
        script call per write, grouped by the primary serving the slot. An operation whose slot no
        node serves fails here."""
        from redis.exceptions import RedisClusterException

        plan: dict[str, list] = {}
        by_slot: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_slot.setdefault(self._client.keyslot(k), []).append(i)
        ops = [(idx, [keys[i] for i in idx], None) for idx in by_slot.values()]
        ops += [([len(keys) + j], None, w) for j, w in enumerate(writes)]
        for op in ops:
            try:
                node = self._client.get_node_from_key(op[1][0] if op[2] is None else op[2].key).name
            except RedisClusterException as exc:
                self._stale = True
                for i in op[0]:
                    results[i] = failed(exc, self._timeout)
                continue
            plan.setdefault(node, []).append(op)
        return plan

    async def _send(self, ops: list, script: bool) -> list:
        """One node's pipeline; its replies in order (a failed command's reply is its exception)."""
        pipe = self._client.pipeline(transaction=False)
        for _, read, write in ops:
            if write is None:
                pipe.execute_command("MGET", *read)  # one slot (ClusterPipeline blocks its mget)
            else:
                self._queue_write(pipe, write, script)
        async with asyncio.timeout(self._timeout):
            return await pipe.execute(raise_on_error=False)

    def _place_replies(self, results: list, indices: list[int], read: bool, reply, node: str) -> None:
        from redis.exceptions import ClusterDownError, ConnectionError, MovedError, TimeoutError

        if isinstance(reply, ClusterDownError | ConnectionError | MovedError | TimeoutError):
            self._stale, self._failed_node = True, node
        if isinstance(reply, Exception):
            reply = failed(reply, self._timeout, f"primary {node}: ")
        if isinstance(reply, Failed):
            values = [reply] * len(indices)
        else:
            values = unpack_reads(reply, len(indices), self._timeout) if read else [reply]
        for i, v in zip(indices, values, strict=True):
            results[i] = v

    async def _refresh(self) -> None:
        """After a node failed: the slot map again, asking the other nodes first (a replica promoted
        meanwhile is then found), at most every ``REFRESH_EVERY_S``."""
        if not self._stale or time.monotonic() - self._refreshed < REFRESH_EVERY_S:
            return
        self._refreshed = time.monotonic()
        # the client's own refresh (what its retries run), without closing any connection
        await self._client.nodes_manager.initialize(last_failed_node_name=self._failed_node)
        self._stale, self._failed_node = False, None
