"""bench/serving's z_baseline: another checkout's server must run that checkout's code."""

from __future__ import annotations

import subprocess
import sys

from rnnserve.bench.serving import NAMESPACE_DIRS, baseline_import_path


def test_a_baseline_checkout_of_this_layout_serves_its_own_code_not_the_installed_one(tmp_path):
    checkout = tmp_path / "before"
    for target in NAMESPACE_DIRS.values():
        if target.endswith(".py"):
            (checkout / target).parent.mkdir(parents=True, exist_ok=True)
            (checkout / target).write_text("")
        else:
            (checkout / target).mkdir(parents=True, exist_ok=True)
            (checkout / target / "__init__.py").write_text(f"WHERE = {target!r}\n")
    path, entry = baseline_import_path(checkout)
    assert entry == "rnnserve.cli"
    probe = "import rnnserve.service as s, rnnserve.cli as c; print(s.__file__, c.WHERE)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=path, env={"PYTHONPATH": str(path)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(path / "rnnserve" / "service" / "__init__.py"), "rnnserve/cli"]
    flat = tmp_path / "flat"
    (flat / "service").mkdir(parents=True)
    assert baseline_import_path(flat) == (flat, "service.cli")
