"""The observability cost tool times the hot path's metrics and drift calls, in multiprocess mode as in
the server (its own interpreter: the mode is chosen before prometheus_client is imported)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_each_part_and_their_total_are_reported_per_sequence(tiny_bundle, bentoml_home):
    out = subprocess.run([sys.executable, "-m", "rnnserve.bench.observability_cost", "--model", tiny_bundle.name,
                          "--batch", "8", "--calls", "400", "--rounds", "2"],
                         env={**os.environ, "BENTOML_HOME": str(bentoml_home)}, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    figures = dict(line.split(": ") for line in out.splitlines())
    parts = ["request_us", "batch_us_per_sequence", "drift_us_per_sequence"]
    assert list(figures) == [*parts, "total_us_per_sequence"]
    assert all(float(figures[k]) > 0 for k in parts)
    assert abs(sum(float(figures[k]) for k in parts) - float(figures["total_us_per_sequence"])) < 0.2
