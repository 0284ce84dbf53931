"""A real Redis Cluster from Debian's ``redis-server`` (``make tools``) on free loopback ports, for tests
and benchmarks: ``primaries`` primaries with ``replicas`` replicas each, made one cluster by
``redis-cli --cluster create`` (even contiguous slot ranges), every node a ``RedisServer`` in a process
group of its own, without persistence.

Failover is quick for tests (``cluster-node-timeout``, 1000 ms by default: a killed primary's replica
takes over ~2-3 s later) and a failed primary stops only its own slots
(``cluster-require-full-coverage no``). ``kill`` a node (SIGKILL) or ``crash`` it (``DEBUG SEGFAULT``),
then ``wait_failover``; ``cut_replicas`` first for a replica behind its primary; ``move_slots`` to
reshard."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

from .launch import free_port
from .redis import RedisServer, redis_binary


@dataclass(frozen=True)
class NodeView:
    """One node as ``CLUSTER NODES`` shows it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str  # "-" for a primary
    slots: tuple[tuple[int, int], ...]

    @property
    def primary(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags and "fail?" not in self.flags


def parse_nodes(nodes: dict) -> list[NodeView]:
    """redis-py's parsed ``CLUSTER NODES`` reply as ``NodeView``s."""
    return [NodeView(n["node_id"], int(address.rsplit(":", 1)[1]), frozenset(n["flags"].split(",")), n["master_id"],
                     tuple((int(a), int(b)) for a, b, *_ in n["slots"]))
            for address, n in nodes.items()]


class RedisClusterServer:
    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000, cpus: str | None = None,
                 binary: str | None = None) -> None:
        self.binary = binary or redis_binary()
        self.cli = shutil.which("redis-cli")
        if self.binary is None or self.cli is None:
            raise FileNotFoundError("redis-server / redis-cli are not installed: run `make tools` (Debian package "
                                    "redis-server)")
        self.count, self.replicas = primaries, replicas
        self.node_timeout_ms, self.cpus = node_timeout_ms, cpus
        self.nodes = [self._node() for _ in range(primaries * (1 + replicas))]
        self._slots: dict[int, tuple] = {}  # the slots of the nodes killed or crashed

    def _node(self) -> RedisServer:
        args = ("--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync-delay", "0", "--enable-debug-command", "local")
        return RedisServer(binary=self.binary, cpus=self.cpus, args=args)

    def _start_node(self, i: int, tries: int = 5) -> None:
        """Start node ``i``; a port taken meanwhile by another process (free ports are only free when
        chosen) gets new ports."""
        for _ in range(tries - 1):
            try:
                self.nodes[i].start()
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc):
                    raise
                self.nodes[i].__exit__()
                self.nodes[i] = self._node()
        self.nodes[i].start()

    @property
    def url(self) -> str:
        """The store URL: every primary's address (any one suffices; the others are fallbacks)."""
        return "redis-cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.count])

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        try:
            for i in range(len(self.nodes)):
                self._start_node(i)
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run([self.cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                            "--cluster-yes"], check=True, capture_output=True, timeout=timeout)
            self._wait(self._healthy, timeout, "the cluster did not become healthy")
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)

    def view(self, port: int | None = None) -> list[NodeView]:
        """``CLUSTER NODES`` as a live node (``port``, or the first running one) sees it."""
        port = port or next(n.port for n in self.nodes if n.running)
        with self.client(port) as c:
            return parse_nodes(c.execute_command("CLUSTER NODES"))

    def primaries(self) -> list[int]:
        """The ports of the primaries that serve slots now."""
        return [v.port for v in self.view() if v.primary and v.slots]

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def keys(self, port: int) -> int:
        with self.client(port) as c:
            return int(c.dbsize())

    def info(self, port: int, section: str) -> dict:
        with self.client(port) as c:
            return c.info(section)

    def owner(self, key: bytes | str) -> int:
        """The port of the primary that serves ``key``'s slot now."""
        with self.client(self.primaries()[0]) as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", key))
        return next(v.port for v in self.view() if v.primary and any(a <= slot <= b for a, b in v.slots))

    def wait_replicated(self, port: int, timeout: float = 10.0) -> None:
        """Until the replicas of the primary on ``port`` have every write it has acknowledged."""

        def caught_up() -> bool:
            info = self.info(port, "replication")
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return bool(replicas) and all(r["offset"] == info["master_repl_offset"] for r in replicas)

        self._wait(caught_up, timeout, f"the replicas of {port} did not catch up")

    def cut_replicas(self, port: int) -> None:
        """Cut the primary on ``port`` off from its replicas, which then miss what it acknowledges (an
        asynchronous replica behind its primary), until ``kill`` or a new ``cluster``: the replicas'
        ``masterauth`` is set to a password the primary refuses, then their links are closed."""
        me = next(v.node_id for v in self.view(port) if v.port == port)
        for v in self.view(port):
            if v.primary_id == me:
                with self.client(v.port) as c:
                    c.config_set("masterauth", "rnnserve-cut-off")
        with self.client(port) as c:
            c.execute_command("CLIENT KILL", "TYPE", "replica")

    def move_slots(self, source: int, target: int, count: int, timeout: float = 60.0) -> None:
        """Move ``count`` slots, with their keys, from the primary on ``source`` to the one on ``target``
        (``redis-cli --cluster reshard``: clients meet ASK while a slot migrates, MOVED after)."""
        ids = {v.port: v.node_id for v in self.view()}
        subprocess.run([self.cli, "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from", ids[source],
                        "--cluster-to", ids[target], "--cluster-slots", str(count), "--cluster-yes",
                        "--cluster-pipeline", "10"], check=True, capture_output=True, timeout=timeout)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: no goodbye to the cluster or to clients."""
        self._remember_slots(port)
        self.node(port).kill()

    def crash(self, port: int) -> None:
        """The node on ``port`` crashes by itself (``DEBUG SEGFAULT``)."""
        import redis

        self._remember_slots(port)
        try:
            with self.client(port) as c:
                c.execute_command("DEBUG", "SEGFAULT")
        except redis.ConnectionError:
            pass
        self.node(port).proc.wait(timeout=10)

    def wait_failover(self, dead: int, timeout: float = 30.0) -> float:
        """Seconds until every live node sees the slots of the dead primary ``dead`` served by a
        promoted replica."""
        t0 = time.monotonic()
        slots = self._slots[dead]

        def promoted() -> bool:
            for n in self.nodes:
                if n.running:
                    owners = [v for v in self.view(n.port) if v.slots == slots and v.primary]
                    if not owners or owners[0].port == dead:
                        return False
            return True

        self._wait(promoted, timeout, f"no replica took over the slots of primary {dead}")
        return time.monotonic() - t0

    def _remember_slots(self, port: int) -> None:
        self._slots[port] = next(v.slots for v in self.view(port) if v.port == port)

    def _healthy(self) -> bool:
        for n in self.nodes:
            with self.client(n.port) as c:
                if c.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    return False
            views = self.view(n.port)
            if sum(v.primary and bool(v.slots) for v in views) != self.count or len(views) != len(self.nodes):
                return False
            role = self.info(n.port, "replication")
            if role["role"] == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} in {timeout:g} s:\n" + "\n".join(n.output()[-500:] for n in self.nodes))
            time.sleep(0.05)

    def stop(self) -> None:
        for n in self.nodes:
            n.__exit__()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
