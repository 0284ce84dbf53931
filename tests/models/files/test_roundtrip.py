"""Each format round-trips a shipped set: `rnnserve datasets --export` writes its official splits as
.ts, .csv and .npz; `rnnserve train --data` reads each back into exactly the splits `--dataset`
loads with the same seed (series order kept), and trains to identical metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnnserve.cli import main
from rnnserve.models.data import load_aeon
from rnnserve.models.files.source import DataFiles, load_files

FORMATS = ("ts", "csv", "npz")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    for name in ("JapaneseVowels", "CardanoSentiment", "Covid3Month_disc", "UnitTest"):
        assert main(["datasets", "--export", name, str(out)]) == 0
    return out


def same(a, b) -> bool:
    return (a.labels == b.labels and a.task == b.task and np.array_equal(a.targets, b.targets)
            and len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True)))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["JapaneseVowels", "CardanoSentiment", "Covid3Month_disc"])
def test_the_files_load_the_same_splits_as_the_dataset(exported, name, fmt):
    """Unequal lengths and 12 features (JapaneseVowels), two features of very different scales and
    regression targets (CardanoSentiment), labels stored as 0.0/1.0/2.0 (Covid3Month_disc)."""
    files = DataFiles(str(exported / f"{name}_TRAIN.{fmt}"), str(exported / f"{name}_TEST.{fmt}"))
    loaded, reference = load_files(files, seed=2).splits, load_aeon(name, seed=2)
    for part in ("train", "val", "test"):
        assert same(getattr(loaded, part), getattr(reference, part)), part


def _train(tmp_path, capsys, name: str, *source: str) -> dict:
    assert main(["train", *source, "--name", name, "--workdir", str(tmp_path), "--seed", "1", "--epochs", "2",
                 "--hidden-size", "8", "--ensemble", "1", "--no-baseline"]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / name / "history.json").read_text())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["CardanoSentiment", "UnitTest"])
def test_training_from_the_files_gives_the_datasets_metrics(exported, tmp_path, capsys, name, fmt):
    by_name = _train(tmp_path, capsys, "a", "--dataset", name)
    by_file = _train(tmp_path, capsys, "b", "--data", str(exported / f"{name}_TRAIN.{fmt}"),
                     "--test-data", str(exported / f"{name}_TEST.{fmt}"))
    assert by_file["metrics"] == by_name["metrics"]
    assert by_file["config"] == by_name["config"] and by_file["task"] == by_name["task"]
    headline = "test_rmse" if name == "CardanoSentiment" else "test_accuracy"
    assert by_file[headline] == by_name["metrics"][headline]
    assert by_file["data"]["format"] == fmt and by_file["data"]["split"]["series"]["test"] == (33 if headline ==
                                                                                               "test_rmse" else 22)


def test_the_exported_csv_is_long_format_with_named_columns(exported):
    lines = (exported / "CardanoSentiment_TRAIN.csv").read_text().splitlines()
    assert lines[0] == "id,time,dim_0,dim_1,target"
    assert len(lines) == 1 + 74 * 24 and lines[1].startswith("0,0,0.504,4339.96019453,")
    assert (exported / "JapaneseVowels_TEST.ts").read_text().count("\n") > 370
