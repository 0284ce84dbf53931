"""A real ``redis-server`` (Debian package, ``make tools``) on a free loopback port, in a process
group of its own, for tests and benchmarks: no persistence, so a restart starts empty, like a new
Redis pod. ``stop`` / ``kill`` / ``start`` again on the same port model an outage and a restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .launch import free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis answers PING on 127.0.0.1:``port`` (raw RESP: no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def used_memory(port: int) -> int:
    """Redis's ``used_memory`` (bytes), from ``INFO memory`` over raw RESP."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO memory\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < int(data[1 : data.index(b"\r\n")]) + data.index(b"\r\n") + 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("no used_memory in INFO memory")


class RedisServer:
    def __init__(self, port: int | None = None, binary: str | None = None, cpus: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.binary = binary or redis_binary()
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed: run `make tools` (Debian package redis-server)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="rnnserve-redis-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.cpus = cpus  # taskset CPU list (benchmarks: beside the server, away from the client)
        self.args = tuple(args)  # more redis-server options (a cluster node's)

    def start(self, timeout: float = 20.0) -> RedisServer:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.dir), "--protected-mode", "yes", "--daemonize", "no", *self.args]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.output()}")
            if ping(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server not answering PING in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int, timeout: float) -> None:
        if self.running:
            os.killpg(self.proc.pid, sig)  # the group this object created
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10.0)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
