"""bench/training.py --quick, the CI version of the training benchmark: the default recipe and
1-NN DTW on two small datasets, one seed, under 3 minutes; the table lands between the markers."""

from __future__ import annotations

import json
import time

import pytest

from rnnserve.bench import training

pytestmark = pytest.mark.slow


def test_quick_training_benchmark_writes_its_table_and_beats_dtw(tmp_path):
    doc = tmp_path / "BENCH.md"
    doc.write_text(f"# bench\n\n{training.BEGIN}\nold\n{training.END}\n\nafter\n")
    started = time.perf_counter()
    rc = training.main(["--quick", "--workers", "1", "--out", str(tmp_path / "t.json"), "--doc", str(doc)])
    assert rc == 0 and time.perf_counter() - started < 180
    report = json.loads((tmp_path / "t.json").read_text())
    rows = {s["dataset"]: s for s in report["summary"]}
    assert set(rows) == set(training.QUICK_DATASETS)
    for row in rows.values():
        assert row["baseline"] is not None and row["beats_baseline"], row
    text = doc.read_text()
    assert "old" not in text and "| ItalyPowerDemand |" in text and text.endswith("after\n")
    assert (tmp_path / "t.png").stat().st_size > 0
