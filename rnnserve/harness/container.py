"""A container of the serving image (``podman run``), or a Kubernetes manifest (``podman kube play``),
on free loopback ports, for tests and measurements.

Networking is slirp4netns by default: the container keeps the image's own ports (3000, 8001) inside
its own network namespace and podman forwards ``127.0.0.1:<free port>`` on this machine to them, so
nothing but loopback is ever addressed from here (podman's default bridge would route to
10.88.0.0/16). Every container and pod gets a unique name and is removed by that name when done;
nothing else in podman's store is touched.
"""

from __future__ import annotations

import itertools
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from rnnserve.image.podman import Podman

from .launch import free_port

NETWORK = "slirp4netns:port_handler=slirp4netns"
HTTP, GRPC = 3000, 8001  # the image's ports
_names = itertools.count()


def unique_name(prefix: str = "rnnserve-test") -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def answers(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def security_options(deployment: dict) -> list[str]:
    """``podman run`` flags for what a Deployment's securityContext states: its user, a read-only root
    filesystem (podman mounts a tmpfs on /tmp, as the Deployment an emptyDir), no privilege
    escalation, the dropped capabilities."""
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc, psc = c["securityContext"], pod["securityContext"]
    flags = ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}"]
    if sc["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    if sc["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags + [f"--cap-drop={cap}" for cap in sc["capabilities"]["drop"]]


class Container:
    """``podman run -d`` of ``image`` with its HTTP and gRPC ports published on free loopback ports.

    ``options`` are more ``podman run`` flags (``--read-only``, ``--cap-drop``, ``-v``, ``-e`` ...);
    ``network`` replaces the slirp4netns network: ``none`` (nothing is published), or ``host`` (the
    server listens on 127.0.0.1 at the free ports itself: kernel TCP end to end, for a test that
    must see every response written just before the container exits, which slirp4netns's user-mode
    TCP can lose when the container's network goes with it)."""

    def __init__(self, image: str, options: list[str] | tuple = (), network: str = NETWORK,
                 podman: Podman | None = None) -> None:
        self.podman = podman or Podman()
        self.image, self.name = image, unique_name()
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        if network == "host":  # the server itself listens on this machine's loopback, on free ports
            publish = ["-e", "RNNSERVE_SERVER__HOST=127.0.0.1", "-e", f"RNNSERVE_SERVER__HTTP_PORT={self.http_port}",
                       "-e", f"RNNSERVE_SERVER__GRPC_PORT={self.grpc_port}"]
        elif network == "none":
            publish = []
        else:
            publish = ["-p", f"127.0.0.1:{self.http_port}:{HTTP}", "-p", f"127.0.0.1:{self.grpc_port}:{GRPC}"]
        self.argv = ["run", "-d", "--name", self.name, "--network", network, *publish, *options, image]
        self.started = 0.0

    def start(self) -> Container:
        self.started = time.monotonic()
        self.podman.run(*self.argv, timeout=120)
        return self

    def state(self) -> dict:
        return self.podman.inspect("container", self.name)["State"]

    def host_pid(self) -> int:
        """The host PID of the container's first process."""
        return int(self.state()["Pid"])

    def logs(self) -> str:
        done = self.podman.run("logs", self.name, check=False, timeout=60)
        return (done.stdout + done.stderr).decode(errors="replace")[-5000:]

    def exec(self, *command: str, check: bool = False):
        return self.podman.run("exec", self.name, *command, check=check, timeout=60)

    def wait_ready(self, timeout: float = 120.0, probe=None) -> float:
        """Seconds from ``podman run`` to the first 200 from ``/readyz`` (``probe()`` -> bool replaces
        the HTTP probe, e.g. one run inside the container)."""
        probe = probe or (lambda: answers(self.url + "/readyz") == 200)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return time.monotonic() - self.started
            if self.state()["Status"] not in ("running", "created", "configured"):
                raise RuntimeError(f"container {self.name} exited ({self.state()['ExitCode']}):\n{self.logs()}")
            time.sleep(0.1)
        raise TimeoutError(f"container {self.name} not ready in {timeout}s:\n{self.logs()}")

    def kill(self, signal: str = "TERM") -> None:
        self.podman.run("kill", "--signal", signal, self.name, timeout=60)

    def pause(self) -> None:
        """Freeze every process of the container (``podman pause``); the kernel still completes TCP
        handshakes on its listening sockets."""
        self.podman.run("pause", self.name, timeout=60)

    def unpause(self) -> None:
        self.podman.run("unpause", self.name, timeout=60)

    def wait(self, timeout: float = 120.0) -> int:
        """The container's exit status, once it has stopped."""
        return int(self.podman.text("wait", self.name, timeout=timeout).splitlines()[-1])

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time", "5", self.name, check=False, timeout=120)

    def __enter__(self) -> Container:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class KubePlay:
    """``podman kube play`` of a manifest file, and ``kube down`` of the same file when done, with the
    named volumes it made for the pods' emptyDirs (``volumes``: their names, unique to the caller)."""

    def __init__(self, manifest: Path, volumes: list[str], podman: Podman | None = None) -> None:
        self.podman = podman or Podman()
        self.manifest, self.volumes = Path(manifest), list(volumes)
        self.output = ""

    def __enter__(self) -> KubePlay:
        try:
            done = self.podman.run("kube", "play", "--network", NETWORK, str(self.manifest), timeout=300)
            self.output = (done.stdout + done.stderr).decode(errors="replace")
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        self.podman.run("kube", "down", str(self.manifest), check=False, timeout=300)
        for volume in self.volumes:
            self.podman.run("volume", "rm", "--force", volume, check=False, timeout=60)

    def __exit__(self, *exc) -> None:
        self.down()
