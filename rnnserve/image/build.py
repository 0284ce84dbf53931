"""``make image`` / ``make image-gpu``: base (``base.py``) -> deps image (cached) -> serving image.

The wheels are downloaded here, by this machine's own pip and its configuration (local indexes,
certificates, proxies), for the base image's Python, glibc and machine (``--only-binary`` with its
manylinux tags), and bind-mounted into the build, which runs with ``--network none``. So nothing in
the build reaches a network or needs the host's pip configuration inside it, and a wheel that would
not run on the base is refused at download time, not found broken in a pod. The deps image is
tagged with a digest of its inputs and reused; the serving image is one layer over it
(``--layers=false``: no intermediate images pile up in the store).
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .base import BaseFacts, ensure_base, probe
from .bento import build_bento, unpack_bento
from .containerfile import app_containerfile, deps_containerfile, deps_key
from .podman import ROOT, Podman, PodmanError

DEPS_REPO = "localhost/rnnserve-deps"
LOCK = Path(tempfile.gettempdir()) / "rnnserve-image.lock"
LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
CUDA_PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
DRIVER_LIBRARIES = {"libcuda.so.1"}  # the NVIDIA driver's, mounted into the container by the GPU runtime


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size: int  # bytes, as podman reports it
    bento: str
    models: list[tuple[str, str]]
    deps: str


def platform_tags(facts: BaseFacts) -> list[str]:
    """The manylinux tags a wheel may carry to run on the base: its glibc and below, its machine."""
    major, minor = facts.glibc
    tags = [f"manylinux_{major}_{v}_{facts.machine}" for v in range(minor, 4, -1)]
    return tags + [f"{name}_{facts.machine}" for name, need in LEGACY_MANYLINUX.items() if need <= facts.glibc]


def download_wheels(requirements: list[str], facts: BaseFacts, into: Path, name: str = "requirements.txt") -> None:
    into.mkdir(parents=True, exist_ok=True)
    (into / name).write_text("\n".join(requirements) + "\n")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(into), "--only-binary=:all:",
            "--python-version", ".".join(map(str, facts.python)), "--implementation", "cp"]
    for tag in platform_tags(facts):
        argv += ["--platform", tag]
    done = subprocess.run([*argv, "-r", str(into / name)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING")]
        raise RuntimeError("pip download of the serving requirements failed: " + "\n".join(errors[-20:]))


def missing_in_base(podman: Podman, facts: BaseFacts, wheels: Path) -> str | None:
    """The first requirement the base's own pip cannot satisfy from ``wheels`` (no network), or None.

    pip evaluates environment markers for the interpreter it runs on, never for ``--python-version``:
    redis needs async-timeout on Python < 3.11.3 (Debian 12 has 3.11.2), which this machine's 3.11.7
    does not download. The base's pip resolving against the wheelhouse names what is still missing."""
    script = ("python3 -m venv /tmp/resolve && /tmp/resolve/bin/pip install --quiet --dry-run --no-index "
              "--disable-pip-version-check --find-links /wheels -r /wheels/requirements.txt")
    done = podman.run("run", "--rm", "--network", "none", "-v", f"{wheels}:/wheels:ro", "--entrypoint", "sh",
                      facts.name, "-c", script, check=False, timeout=600)
    if done.returncode == 0:
        return None
    err = done.stderr.decode(errors="replace")
    found = re.search(r"No matching distribution found for (.+)", err)
    if found is None:
        raise PodmanError(f"the base's pip cannot install the serving requirements: {err[-2000:]}")
    return found.group(1).split(";")[0].strip()


def fill_wheelhouse(podman: Podman, facts: BaseFacts, requirements: list[str], wheels: Path) -> None:
    """Download the requirements for the base, then whatever the base's own markers add (a few rounds)."""
    download_wheels(requirements, facts, wheels)
    for round_ in range(10):
        missing = missing_in_base(podman, facts, wheels)
        if missing is None:
            return
        print(f"[image] the base also needs {missing} (its own environment markers)", flush=True)
        download_wheels([missing], facts, wheels, name=f"extra-{round_}.txt")
    raise RuntimeError("the base's pip still misses requirements after 10 rounds of downloads")


def ensure_deps(podman: Podman, facts: BaseFacts, requirements: list[str], work: Path) -> str:
    """The deps image for this base and these requirements: found, or built now."""
    tag = f"{DEPS_REPO}:{deps_key(facts.image_id, requirements, platform_tags(facts))}"
    if podman.image_exists(tag):
        print(f"[image] deps {tag}: cached", flush=True)
        return tag
    print(f"[image] deps {tag}: downloading wheels for Python {'.'.join(map(str, facts.python))}, "
          f"glibc {facts.glibc[0]}.{facts.glibc[1]}, {facts.machine}", flush=True)
    ctx = work / "deps"
    fill_wheelhouse(podman, facts, requirements, ctx / "wheels")
    (ctx / "Containerfile").write_text(deps_containerfile(facts.name))
    print(f"[image] deps {tag}: installing", flush=True)
    podman.run("build", "--layers=false", "--network", "none", "--label", "io.rnnserve.cache=deps",
               "-f", str(ctx / "Containerfile"), "-t", tag, str(ctx), timeout=3600)
    shutil.rmtree(ctx)
    return tag


def model_env(models: list[tuple[str, str]]) -> dict[str, str]:
    """What the container serves by default: the bundles it carries (a ConfigMap may override)."""
    names = [name for name, _ in models]
    if len(names) == 1:
        return {"RNNSERVE_MODEL__NAME": names[0]}
    return {"RNNSERVE_MODELS": ",".join(names if len(set(names)) == len(names) else [f"{n}:{v}" for n, v in models])}


def check_cuda_libraries(podman: Podman, tag: str) -> list[str] | None:
    """For an image with ONNX Runtime's CUDA provider: the shared libraries it needs that the image
    does not have (only the driver's may be missing). None for a CPU image."""
    script = ("import os, onnxruntime; p = os.path.join(os.path.dirname(os.path.dirname(onnxruntime.__file__)), "
              f"{CUDA_PROVIDER!r}); print(p if os.path.exists(p) else '')")
    path = podman.text("run", "--rm", "--network", "none", tag, "python", "-c", script)
    if not path:
        return None
    ldd = podman.text("run", "--rm", "--network", "none", tag, "ldd", path)
    return sorted(line.split()[0] for line in ldd.splitlines() if "not found" in line)


@contextmanager
def shared_images_lock():
    """One builder at a time of the images every checkout on this machine shares (podman's store is
    the machine's): a second one waits, then finds the base and deps images built."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_image(tag: str, bentofile: Path, dist: Path, models: list[str] | None = None,
                base: str | None = None) -> BuiltImage:
    podman = Podman()
    bento_tag = build_bento(bentofile, dist, models)
    print(f"[image] bento {bento_tag}", flush=True)
    (ROOT / "build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rnnserve-image-", dir=ROOT / "build"))
    try:
        bento = unpack_bento(bento_tag, work / "bento")
        with shared_images_lock():
            facts = probe(podman, ensure_base(podman, base))
            deps = ensure_deps(podman, facts, bento.requirements(), work)
        labels = {"org.opencontainers.image.title": "rnnserve", "io.rnnserve.bento": bento_tag,
                  "io.rnnserve.models": ",".join(f"{n}:{v}" for n, v in bento.models), "io.rnnserve.deps": deps}
        env = {**bento.env, **model_env(bento.models)}
        text = app_containerfile(deps, bento.wheel.relative_to(work).as_posix(), env, labels)
        (work / "Containerfile").write_text(text)
        print(f"[image] {tag}: bento + {len(bento.models)} model bundle(s) over {deps}", flush=True)
        previous = podman.inspect("image", tag)["Id"] if podman.image_exists(tag) else None
        podman.run("build", "--layers=false", "--network", "none", "-f", str(work / "Containerfile"), "-t", tag,
                   str(work), timeout=1800)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if previous and previous != podman.inspect("image", tag)["Id"]:
        podman.run("rmi", previous, check=False)  # the image this tag named before, now untagged (ours)
    missing = check_cuda_libraries(podman, tag)
    if missing is not None and set(missing) - DRIVER_LIBRARIES:
        raise PodmanError(f"{tag}: ONNX Runtime's CUDA provider needs libraries the image lacks: {missing}")
    return BuiltImage(tag, podman.image_size(tag), bento_tag, bento.models, deps)
