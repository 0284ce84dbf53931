"""bench/training.py --quick, the CI version of the training benchmark: the default recipe and
1-NN DTW on two small datasets, one seed, under 3 minutes; the table lands between the markers."""

from __future__ import annotations

import json
import time

import pytest

from rnnserve.bench import training
from rnnserve.bench.training_report import BEGIN, END, REGRESSION_BEGIN, REGRESSION_END

pytestmark = pytest.mark.slow


def test_quick_training_benchmark_writes_its_table_and_beats_dtw(tmp_path):
    doc = tmp_path / "BENCH.md"
    doc.write_text(f"# bench\n\n{BEGIN}\nold\n{END}\n\nafter\n")
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


def test_the_regression_sets_run_through_the_file_path_into_their_own_table(tmp_path):
    """Two seeds of a shortened recipe (--set epochs=2): the table lists both baselines and lands
    between the regression markers; the classification table is left alone."""
    doc = tmp_path / "BENCH.md"
    doc.write_text(f"{BEGIN}\nkept\n{END}\n{REGRESSION_BEGIN}\nold\n{REGRESSION_END}\n")
    files = tmp_path / "files"
    rc = training.main(["--datasets", "CardanoSentiment", "--seeds", "0,1", "--workers", "1", "--set", "epochs=2",
                        "--format", "ts", "--files-dir", str(files), "--out", str(tmp_path / "t.json"),
                        "--doc", str(doc)])
    assert rc == 0 and (files / "CardanoSentiment_TRAIN.ts").is_file()
    row = json.loads((tmp_path / "t.json").read_text())["regression"][0]
    assert row["dataset"] == "CardanoSentiment" and len(row["test_rmse"]) == 2 and row["n_test"] == 33
    assert row["dtw"] > 0 and row["training_mean"] > 0 and isinstance(row["meets_target"], bool)
    text = doc.read_text()
    assert "kept" in text and "old" not in text and "| CardanoSentiment | 74 / 33 | 24 | 2 |" in text
    assert "--format ts --set epochs=2" in text and (tmp_path / "t-regression.png").stat().st_size > 0
