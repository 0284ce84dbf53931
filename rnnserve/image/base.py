"""The base image: ``BASE_IMAGE`` when one is named, else a Debian 12 root filesystem built here.

No container-image registry is reachable from this machine type, so the default base is made from
Debian's packages: ``debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates
bookworm`` into a temporary folder (about a minute), trimmed of documentation and apt's lists, then
``podman import``-ed as ``localhost/rnnserve-base:bookworm``. It is built once and kept: later builds
find it. A user with a registry names a usual Python image instead (``BASE_IMAGE=python:3.11-slim``,
pulled when absent). Whatever the base, ``probe`` asks it for its Python, glibc and machine, which
choose the wheels the image installs, and refuses a base without Python 3.11 and ``venv``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .podman import Podman, PodmanError

DEFAULT_BASE = "localhost/rnnserve-base:bookworm"
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,ca-certificates"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR_ENV = "DEBIAN_MIRROR"  # not RNNSERVE_*: that prefix is for settings, which refuse unknown names
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TRIM = ["var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log",
        "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"]
PROBE = ("import json, platform, sys, venv; print(json.dumps({'python': list(sys.version_info[:3]), "
         "'libc': platform.libc_ver(), 'machine': platform.machine()}))")


@dataclass(frozen=True)
class BaseFacts:
    """What the base image's own ``python3`` says: it chooses the wheels (tags) the image gets."""

    name: str
    image_id: str
    python: tuple[int, int, int]  # the micro version too: markers such as python_full_version < '3.11.3'
    glibc: tuple[int, int]
    machine: str


def build_debian_base(podman: Podman, name: str = DEFAULT_BASE, mirror: str | None = None) -> None:
    """debootstrap a minimal Debian with Python into a temporary folder and import it as ``name``."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise FileNotFoundError("debootstrap is not installed: run `make tools` (Debian package debootstrap), "
                                "or name a base image you have: BASE_IMAGE=python:3.11-slim")
    if os.geteuid() != 0:
        raise PermissionError("building the Debian base image needs root (debootstrap): run as root, or name a "
                              "base image you have: BASE_IMAGE=python:3.11-slim")
    mirror = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    work = Path(tempfile.mkdtemp(prefix="rnnserve-base-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    rootfs = work / "rootfs"
    try:
        print(f"[image] base {name}: debootstrap {SUITE} from {mirror} (about a minute)", flush=True)
        done = subprocess.run([debootstrap, "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs),
                               mirror], capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise PodmanError(f"debootstrap exited {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
        for rel in TRIM:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman.run("import", "--change", f"ENV PATH={PATH}", "--change", "ENV LANG=C.UTF-8",
                   "--change", 'CMD ["/bin/bash"]', "-", name,
                   stdin=tar.stdout, timeout=600)
        if tar.wait() != 0:
            raise PodmanError(f"tar of {rootfs} exited {tar.returncode}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_base(podman: Podman, name: str | None = None) -> str:
    """The base image's name, built (the default) or pulled (a named one) when absent."""
    name = name or DEFAULT_BASE
    if podman.image_exists(name):
        return name
    if name == DEFAULT_BASE:
        build_debian_base(podman, name)
    else:
        print(f"[image] base {name}: podman pull", flush=True)
        podman.run("pull", name, timeout=1800, stdout=None)
    return name


def probe(podman: Podman, name: str) -> BaseFacts:
    """Run the base's ``python3`` once (no network) and refuse a base the serving set cannot use."""
    done = podman.run("run", "--rm", "--network", "none", "--entrypoint", "python3", name, "-c", PROBE,
                      check=False, timeout=120)
    if done.returncode != 0:
        raise PodmanError(f"base image {name} has no usable python3 with venv: "
                          f"{done.stderr.decode(errors='replace')[-1000:]}")
    facts = json.loads(done.stdout.decode().strip().splitlines()[-1])
    libc, libc_version = facts["libc"]
    if libc != "glibc":
        raise PodmanError(f"base image {name}: the wheels need glibc, the base has {libc or 'an unknown libc'}")
    python = tuple(facts["python"])
    if python[:2] != (3, 11):
        raise PodmanError(f"base image {name} has Python {python[0]}.{python[1]}; rnnserve needs 3.11 "
                          "(BASE_IMAGE=python:3.11-slim, or the default Debian 12 base)")
    glibc = tuple(int(p) for p in libc_version.split(".")[:2])
    image_id = podman.inspect("image", name)["Id"]
    return BaseFacts(name, image_id, python, glibc, facts["machine"])
