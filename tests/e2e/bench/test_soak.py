"""bench/soak.py, shortened: the same mixed load, sampler and verdict as the 10-minute run."""

from __future__ import annotations

import json

import pytest

from rnnserve.bench import soak

pytestmark = pytest.mark.e2e


def test_short_soak_answers_everything_and_samples_the_server(tiny_bundle, tmp_path):
    out = tmp_path / "soak.json"
    assert soak.main(["--model", "tiny", "--duration", "12", "--concurrency", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["counts"]["ok"] > 0 and report["counts"]["lost"] == 0
    assert len(report["samples"]) >= 2 and all(s["rss_mib"] > 0 and s["fds"] > 0 for s in report["samples"])
    assert any(s["drift_window"] for s in report["samples"])  # read from the server's /metrics
