"""The bento an image is made from: ``bentoml build`` of a bentofile (its model list replaced when
``MODELS`` names the user's own), exported with its model bundles and unpacked into a build context.

The bentofile's wheel (``./dist/rnnserve-*.whl``, the serving wheel ``make image`` builds first) and
the bentofile travel in a temporary build folder, as ``make bento`` has them in the checkout. Every
bundle gets its store's ``latest`` file (``bentoml export`` leaves it out, and BentoML would rewrite
it on a read-only root filesystem); every file is made world-readable (the pod's UID owns none).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Bento:
    tag: str
    path: Path  # the unpacked bento (bento.yaml, env/, src/, models/)
    wheel: Path  # the project's serving wheel inside it
    models: list[tuple[str, str]]  # (name, version) as bundled
    env: dict[str, str]  # the bentofile's docker.env

    def requirements(self) -> list[str]:
        """The bento's pinned requirements plus the serving wheel's own (e.g. redis for shared streams)."""
        lines = (self.path / "env" / "python" / "requirements.txt").read_text().splitlines()
        reqs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "-"))]
        return reqs + wheel_requirements(self.wheel)


def wheel_requirements(wheel: Path) -> list[str]:
    """The unconditional ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        text = whl.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and ";" not in line]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def build_bento(bentofile: Path, dist: Path, models: list[str] | None) -> str:
    """``bentoml build`` of ``bentofile`` (``models`` replacing its list); returns the bento's tag."""
    spec = yaml.safe_load(Path(bentofile).read_text())
    if models:
        spec["models"] = [m if ":" in m else f"{m}:latest" for m in models]
    with tempfile.TemporaryDirectory(prefix="rnnserve-bento-") as tmp:
        ctx = Path(tmp)
        for wheel in spec["python"].get("wheels", []):
            source = Path(dist) / Path(wheel).name
            if not source.is_file():
                raise FileNotFoundError(f"{source} is missing: build the serving wheel first "
                                        "(SERVING_WHEEL=1 pip wheel --no-deps --wheel-dir dist ., as make image does)")
            (ctx / Path(wheel).parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, ctx / wheel)
        (ctx / Path(bentofile).name).write_text(yaml.safe_dump(spec))
        out = _run([sys.executable, "-m", "bentoml", "build", "-f", str(ctx / Path(bentofile).name), "--output", "tag",
                    str(ctx)], "bentoml build", cwd=ctx)
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def unpack_bento(tag: str, into: Path) -> Bento:
    """``bentoml export`` (bento + model bundles) unpacked at ``into``, ready to be copied into an image."""
    archive = into.parent / "bento.tar"
    _run([sys.executable, "-m", "bentoml", "export", tag, str(archive)], "bentoml export")
    with tarfile.open(archive) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    archive.unlink()
    info = yaml.safe_load((into / "bento.yaml").read_text())
    models = [tuple(m["tag"].split(":")) for m in info["models"]]
    for name, version in models:
        (into / "models" / name / "latest").write_text(version)
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.stat().st_mode & 0o111 else 0o644)
    (wheel,) = (into / "env" / "python" / "wheels").glob("rnnserve-*.whl")
    return Bento(tag, into, wheel, models, dict(info.get("docker", {}).get("env") or {}))
