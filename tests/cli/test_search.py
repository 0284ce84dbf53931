"""`rnnserve search` -> `rnnserve train --from-study` -> `rnnserve export`, and the command line a
search prints to reproduce its best trial."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields

import pytest

from rnnserve.cli import build_parser, main
from rnnserve.cli.train import reproduce_command, train_config
from rnnserve.models.train import TrainConfig


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value * 1.5 + 0.1234567890123
    return {"lstm": "gru", "default": "chrono"}.get(value, "lstm")


def test_the_printed_command_trains_exactly_the_trial_config():
    """Every field differs from its default (so every one must be on the command line), floats
    keep all their digits, and false booleans are spelled out."""
    config = {f.name: _other(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    config["refit"] = False  # trials run without refit; `rnnserve train` refits
    command = reproduce_command("JapaneseVowels", "best", "artifacts", config)
    argv = shlex.split(command)
    assert argv[:2] == ["rnnserve", "train"]
    args = build_parser().parse_args(argv[1:])
    assert train_config(args) == TrainConfig(**{**config, "refit": True})


def test_a_searched_default_value_is_still_spelled_out():
    config = TrainConfig().to_dict()
    command = reproduce_command("synthetic", "n", "w", config, searched=("bidirectional", "lr"))
    assert "--no-bidirectional" in command and f"--lr {TrainConfig().lr!r}" in command
    assert "--hidden-size" not in command  # not searched, at its default


def test_a_bad_search_space_file_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "space.yaml"
    bad.write_text("params:\n  hidden_size: {low: 0, high: 64}\n  cell: {choices: [lstm]}\n")
    assert main(["search", "--space", str(bad), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"[rnnserve] error: {bad}: params.hidden_size.low: must be >= 1, got 0"]


def test_from_study_needs_a_study(tmp_path, capsys):
    assert main(["train", "--from-study", str(tmp_path / "none.db"), "--workdir", str(tmp_path)]) == 2
    assert "no study file at" in capsys.readouterr().err


def test_show_space_prints_a_usable_default(tmp_path, capsys):
    assert main(["search", "--show-space", "regression"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "s.yaml").write_text(text)
    from rnnserve.models.search.space import load_space

    assert "noise" in load_space(tmp_path / "s.yaml").names


@pytest.mark.slow
def test_search_then_train_the_best_trial_then_export_it_through_the_parity_gate(tmp_path, capsys, bentoml_home):
    work = tmp_path / "work"
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  cell: {choices: [gru, lstm]}\n  lr: {low: 3.0e-3, high: 3.0e-2, log: true}\n")
    common = ["--dataset", "synthetic", "--name", "searched", "--workdir", str(work)]
    assert main(["search", *common, "--space", str(space), "--trials", "3", "--epochs", "3", "--patience", "3",
                 "--hidden-size", "8", "--num-layers", "1", "--batch-size", "64"]) == 0
    out = capsys.readouterr()
    search_dir = work / "searched" / "search"
    rows = json.loads((search_dir / "search.json").read_text())
    assert len(rows) == 3 and rows[0]["rank"] == 1
    assert {p.name for p in search_dir.glob("search_*.png")} >= {
        "search_optimization_history.png", "search_intermediate_values.png", "search_param_importances.png"}
    printed = [line for line in out.out.splitlines() if line.startswith("rnnserve train ")]
    assert len(printed) == 1 and "--hidden-size 8" in printed[0]

    assert main(["train", "--from-study", str(search_dir / "study.db"), "--name", "searched",
                 "--workdir", str(work)]) == 0
    history = json.loads((work / "searched" / "history.json").read_text())
    best = next(r for r in rows if r["state"] == "complete")
    assert history["config"] == {**history["config"], "cell": best["cell"], "lr": best["lr"], "hidden_size": 8,
                                 "refit": True}
    # the retrained model repeats the trial's selection phase epoch for epoch (it selects on
    # validation accuracy first, then loss: the selected epoch's val_loss is the trial's), then refits
    select = [r for r in history["epochs"] if r["phase"] == "select"]
    assert history["metrics"]["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert select[history["metrics"]["best_epoch"] - 1]["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert any(r["phase"] == "refit" for r in history["epochs"])

    assert main(["export", "--name", "searched", "--workdir", str(work), "--max-length", "300",
                 "--max-batch", "16"]) == 0
    assert "stored searched:" in capsys.readouterr().err
