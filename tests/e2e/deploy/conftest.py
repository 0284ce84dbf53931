"""Deploy fixtures: the serving wheel (built as `make bento` / `make image` build it) and the CPU
serving image with the session's tiny bundle, built once per test session and removed after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnserve.harness.launch import ROOT
from tests.conftest import TINY, need_tool


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The serving wheel, built as `make bento` builds it (SERVING_WHEEL=1)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SERVING_WHEEL": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("rnnserve-*.whl")
    return path


@pytest.fixture(scope="session")
def image(wheel, tiny_bundle):
    """`make image MODELS=tiny`, as a Python call: the local Debian base and the deps image are built
    the first time and found by later sessions; the serving image itself is this session's own."""
    for binary in ("podman", "runc", "slirp4netns", "debootstrap"):
        need_tool(binary)
    from rnnserve.image.build import build_image
    from rnnserve.image.podman import Podman

    tag = f"localhost/rnnserve-test:{os.getpid()}"
    built = build_image(tag, ROOT / "bentofile.yaml", wheel.parent, models=[TINY])
    try:
        yield built
    finally:
        Podman().run("rmi", "--force", tag, check=False)
