"""Start ``rnnserve serve`` as a subprocess on chosen loopback ports, wait until ready, stop it.

Used by the tests, the benchmarks and the load tests; it only ever signals the process group it
created itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .access import PLAIN, Access

ROOT = Path(__file__).resolve().parents[2]  # the checkout (cwd of the servers it starts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A server subprocess in its own process group, ready when ``ready_url`` answers 200 (asked with
    ``access``: its TLS files and headers)."""

    def __init__(self, command: list[str], env: dict[str, str], ready_url: str, cwd: Path = ROOT,
                 name: str = "rnnserve-server", access: Access = PLAIN) -> None:
        self.ready_url = ready_url
        self.access = access
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def answers_ready(self) -> bool:
        """One readiness probe: ``ready_url`` answers 200 (a server without HTTP overrides this)."""
        try:
            request = urllib.request.Request(self.ready_url, headers=self.access.headers)
            with urllib.request.urlopen(request, timeout=1, context=self.access.ssl_context()) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if self.answers_ready():
                return self
            time.sleep(0.3)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this object created
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        try:
            return self.wait_ready()
        except BaseException:  # __exit__ does not run when __enter__ raises: never leak the server
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess(ManagedProcess):
    """``rnnserve serve`` for one model on free loopback ports; ``settings`` are RNNSERVE_* variables.
    ``cpus`` pins the server (and every process it starts) to those CPUs with ``taskset``; ``command``
    replaces ``rnnserve serve`` (a baseline checkout's own entry point, say). ``access``: how its
    clients reach it (the server's TLS and restricted-API settings are the caller's to give); ``url``
    is ``https://`` with TLS."""

    def __init__(self, model: str, settings: dict[str, str] | None = None, env: dict | None = None,
                 cpus: str | None = None, command: list[str] | None = None, cwd: Path = ROOT,
                 access: Access = PLAIN) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"{access.scheme}://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        full_env = dict(os.environ if env is None else env)
        full_env.update({
            "RNNSERVE_MODEL__NAME": model,
            "RNNSERVE_SERVER__HOST": "127.0.0.1",
            "RNNSERVE_SERVER__HTTP_PORT": str(self.http_port),
            "RNNSERVE_SERVER__GRPC_PORT": str(self.grpc_port),
            **(settings or {}),
        })
        argv = command or [sys.executable, "-m", "rnnserve.cli", "serve"]
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        super().__init__(argv, full_env, self.url + "/readyz", cwd=cwd, access=access)

    def workers(self) -> list:
        """The server's live BentoML worker processes (psutil.Process). A worker that was just killed
        stays a zombie until its supervisor reaps it: it is skipped, not an error."""
        import psutil

        found = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(child.cmdline()):
                    found.append(child)
            except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found
