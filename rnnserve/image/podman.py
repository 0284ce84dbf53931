"""The one way this project calls podman: ``podman`` with a containers.conf of the project's own.

Measured on this machine type (Debian 12, podman 4.3): the default OCI runtime ``crun`` fails
("cgroups in hybrid mode not supported") and a rootful container asks for RLIMIT_NOFILE/NPROC above
the machine's hard limits ("setrlimit refused"). ``containers_conf`` writes a containers.conf that
names ``runc`` (where it is installed) and ulimits no higher than this process's own hard limits,
capped at nofile 20000 / nproc 32768, the values measured to work; every podman command this project
runs (image builds, test containers, ``kube play``, which has no ``--ulimit`` flag) reads it through
``CONTAINERS_CONF``. Elsewhere it is harmless: runc and lower limits work wherever podman does.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

NOFILE_MAX = 20_000
NPROC_MAX = 32_768
ROOT = Path(__file__).resolve().parents[2]  # the checkout
CONF = ROOT / "build" / "image" / "containers.conf"


class PodmanError(RuntimeError):
    """A podman command failed; the message names the command and the end of its output."""


def _limit(which: int, cap: int) -> int:
    _, hard = resource.getrlimit(which)
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def containers_conf(path: Path = CONF) -> Path:
    """Write (or rewrite) the project's containers.conf at ``path`` and return its absolute path."""
    nofile, nproc = _limit(resource.RLIMIT_NOFILE, NOFILE_MAX), _limit(resource.RLIMIT_NPROC, NPROC_MAX)
    lines = ["# written by rnnserve.image.podman: runc + ulimits this machine allows", "[containers]",
             f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]', "", "[engine]"]
    if shutil.which("runc"):
        lines.append('runtime = "runc"')
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


class Podman:
    """``podman`` with the project's containers.conf; ``run`` raises PodmanError on a non-zero exit."""

    def __init__(self, conf: Path | None = None, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("podman")
        if self.binary is None:
            raise FileNotFoundError("podman is not installed: run `make tools` (Debian packages podman, buildah, "
                                    "runc, catatonit, debootstrap)")
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(conf or CONF))}

    def run(self, *args: str, stdin=None, timeout: float | None = None, check: bool = True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
        done = subprocess.run([self.binary, *args], env=self.env, stdin=stdin, timeout=timeout,
                              stdout=stdout, stderr=stderr)
        if check and done.returncode != 0:
            tail = (done.stderr or b"").decode(errors="replace")[-3000:]
            raise PodmanError(f"podman {' '.join(args[:3])} ... exited {done.returncode}: {tail}")
        return done

    def text(self, *args: str, timeout: float | None = 120) -> str:
        return self.run(*args, timeout=timeout).stdout.decode().strip()

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def inspect(self, kind: str, name: str) -> dict:
        """``podman <kind> inspect`` of one object (``image``, ``container``, ``pod``) as a dict."""
        return json.loads(self.text(kind, "inspect", name))[0]

    def image_size(self, name: str) -> int:
        return int(self.inspect("image", name)["Size"])
