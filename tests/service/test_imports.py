"""Serving never loads the training or search stack, and the installed import names live under ``rnnserve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "onnx", "aeon", "scipy", "matplotlib", "optuna", "sqlalchemy")
ROOT = Path(__file__).resolve().parents[2]


def test_the_service_and_its_entry_point_import_without_the_training_or_search_stack(tmp_path):
    code = (
        "import json, sys\n"
        "import rnnserve.service.bento, rnnserve.service.entry, rnnserve.service.core\n"
        "import rnnserve.service.transports.grpc, rnnserve.service.runtime.onnx\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_project_code_imports_only_through_the_rnnserve_namespace():
    """Bare ``models`` / ``export`` / ``service`` imports would load a second copy of a module (or a
    user's own module of that name)."""
    offenders = []
    for path in ROOT.glob("**/*.py"):
        if any(part.startswith(".venv") for part in path.parts):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            for name in ("models", "export", "service", "bench", "loadtests"):
                if stripped.startswith((f"from {name}.", f"import {name}.", f"from {name} import")):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {stripped}")
    assert not offenders, offenders
