"""The grid-vs-TPE benchmark runs end to end on a tiny grid and space (so the script cannot rot)."""

from __future__ import annotations

import json

import pytest

from rnnserve.bench.search import main


@pytest.mark.slow
def test_search_benchmark_compares_the_arms_and_writes_its_report(tmp_path, capsys):
    (tmp_path / "grid.yaml").write_text("params:\n  cell: {choices: [gru, rnn]}\nfixed: {hidden_size: 8}\n")
    (tmp_path / "tpe.yaml").write_text("params:\n  cell: {choices: [gru, rnn]}\n  lr: {low: 1.0e-3, high: 3.0e-2, "
                                       "log: true}\nfixed: {hidden_size: 8, num_layers: 1}\n")
    out = tmp_path / "out"
    argv = ["--dataset", "synthetic", "--trials", "2", "--epochs", "2", "--patience", "2",
            "--arms", f"median:{tmp_path / 'tpe.yaml'}", "--grid", str(tmp_path / "grid.yaml"),
            "--out", str(out), "--plots-to", str(tmp_path / "img")]
    assert main(argv) == 0
    report = json.loads((out / "search_bench.json").read_text())
    assert set(report["arms"]) == {"grid", "tpe-median-tpe"}
    assert report["arms"]["grid"]["trials"] == 2 and report["arms"]["tpe-median-tpe"]["trials"] == 2
    verdict = report["verdict"]["tpe-median-tpe"]
    assert verdict["wall_ratio"] == pytest.approx(report["arms"]["tpe-median-tpe"]["wall_s"] /
                                                  report["arms"]["grid"]["wall_s"], abs=0.01)
    assert (out / "grid" / "search.md").exists() and (out / "tpe-median-tpe" / "search.md").exists()
    assert (tmp_path / "img" / "search_tpe-median-tpe_optimization_history.png").exists()
    assert "| grid |" in capsys.readouterr().out
