"""`rnnserve train --data` and `rnnserve search --data` on a CSV: the task rule and the split are
printed and recorded in history.json, and the command a search prints to reproduce its best trial
names the files."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from rnnserve.cli import build_parser, main
from rnnserve.cli.common import data_files
from rnnserve.cli.train import reproduce_command
from rnnserve.models.files.source import DataFiles
from rnnserve.models.files.tabular import Columns


def write_csv(path, n: int = 40, steps: int = 6, regression: bool = False):
    """Series of one noisy feature and a time column, rows shuffled: class = sign of the series'
    level, or (regression) the level itself, in the thousands."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(n):
        level = rng.normal()
        target = f"{1000 * level:.3f}" if regression else ("up" if level > 0 else "down")
        rows += [f"s{s},{t},{level + 0.1 * rng.normal():.5f},{target}" for t in range(steps)]
    rng.shuffle(rows)  # the time column, not the file's order, orders the steps
    path.write_text("series,t,value,y\n" + "\n".join(rows) + "\n")
    return path


COLUMNS = ["--id-col", "series", "--time-col", "t", "--target-col", "y"]


@pytest.mark.parametrize(("regression", "task", "split"), [(False, "classification", "stratified"),
                                                           (True, "regression", "random")])
def test_without_test_data_the_split_is_stated_and_recorded(tmp_path, capsys, regression, task, split):
    data = write_csv(tmp_path / "d.csv", regression=regression)
    assert main(["train", "--data", str(data), *COLUMNS, "--workdir", str(tmp_path), "--name", "m",
                 "--epochs", "2", "--hidden-size", "8", "--ensemble", "1"]) == 0
    err = capsys.readouterr().err
    assert f"[rnnserve] task: {task}: the targets are " in err
    assert f"[rnnserve] split: test: a {split} 20% of {data} (8 series, no --test-data); validation: a {split} " in err
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert history["task"] == task and history["data"]["split"]["test"].startswith(f"a {split} 20% of")
    assert history["data"]["split"]["series"] == {"train": 26, "val": 6, "test": 8}
    assert history["data"]["files"]["columns"] == {"id": "series", "time": "t", "target": "y", "features": None}
    headline = "test_rmse" if regression else "test_accuracy"
    assert history[headline] == history["metrics"][headline]
    if regression:  # in target units (thousands), against both baselines
        assert history["test_rmse"] > 10
        assert [b["name"] for b in history["baselines"]] == ["1-NN DTW", "training mean"]
        assert "vs 1-NN DTW" in history["verdict"] and "and training mean" in history["verdict"]


def test_a_reproduce_command_names_the_files_and_parses_back_to_them(tmp_path):
    files = DataFiles("a b.csv", "t.csv", Columns("series", "t", "y", ("v", "w")), "regression", "linear", 512.0)
    command = reproduce_command(files, "m", "artifacts", {"lr": 0.01, "refit": False}, searched=("lr",))
    argv = shlex.split(command)
    assert argv[:3] == ["rnnserve", "train", "--data"] and "'a b.csv'" in command
    assert data_files(build_parser().parse_args(argv[1:])) == files


@pytest.mark.slow
def test_search_on_a_csv_then_train_its_best_trial_from_the_study(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", regression=True)
    work = tmp_path / "work"
    assert main(["search", "--data", str(data), *COLUMNS, "--name", "s", "--workdir", str(work), "--trials", "2",
                 "--epochs", "2", "--hidden-size", "8", "--batch-size", "16"]) == 0
    out = capsys.readouterr()
    assert "[rnnserve] task: regression: the targets are numbers, not all whole: regression" in out.err
    command = out.out.strip().splitlines()[-1]
    assert command.startswith(f"rnnserve train --data {data} --id-col series --time-col t --target-col y --name s")
    study = work / "s" / "search" / "study.db"
    assert main(["train", "--from-study", str(study), "--workdir", str(work), "--name", "best", "--no-baseline"]) == 0
    history = json.loads((work / "best" / "history.json").read_text())
    assert history["task"] == "regression" and history["data"]["files"]["train"] == str(data.resolve())
    assert history["config"]["epochs"] == 2 and history["config"]["hidden_size"] == 8
