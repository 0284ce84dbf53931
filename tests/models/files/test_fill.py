"""--fill: how missing and infinite values are filled, and a CSV with gaps training once it is given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnserve.cli import main
from rnnserve.models.files.raw import RawSet, fill_missing

NAN = np.nan


def raw(*columns) -> RawSet:
    seq = np.array(columns, dtype=np.float64).T
    return RawSet(Path("f.csv"), [seq], np.array(["a"]), "text", ["series 'a'"], ["x", "y"][: seq.shape[1]], "target")


@pytest.mark.parametrize(("fill", "expected"), [
    ("zero", [0.0, 1.0, 0.0, 0.0, 4.0, 0.0]),
    ("ffill", [1.0, 1.0, 1.0, 1.0, 4.0, 4.0]),
    ("linear", [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]),
])
def test_each_fill(fill, expected):
    (seq,), filled = fill_missing(raw([NAN, 1.0, NAN, np.inf, 4.0, NAN]), fill)
    assert seq[:, 0].tolist() == expected and filled == 4


def test_a_column_with_nothing_to_fill_from_is_refused_by_name():
    with pytest.raises(ValueError, match=r"f.csv, series 'a', column 'y': every value of this series is missing: "
                                         r"--fill linear has nothing to fill from"):
        fill_missing(raw([1.0, 2.0], [NAN, NAN]), "linear")
    (seq,), _ = fill_missing(raw([1.0, 2.0], [NAN, NAN]), "zero")
    assert seq[:, 1].tolist() == [0.0, 0.0]


def test_a_csv_with_gaps_trains_with_fill_and_history_records_it(tmp_path, capsys):
    rows = ["id,time,x,target"] + [f"{s},{t},{'' if (s, t) == (1, 2) else t * s},{s % 2}" for s in range(12)
                                   for t in range(5)]
    (tmp_path / "gaps.csv").write_text("\n".join(rows) + "\n")
    args = ["train", "--data", str(tmp_path / "gaps.csv"), "--workdir", str(tmp_path), "--name", "g", "--epochs", "1",
            "--hidden-size", "4", "--no-baseline"]
    assert main(args) == 2
    assert main([*args, "--fill", "ffill"]) == 0
    err = capsys.readouterr().err
    assert "filled 1 missing or infinite values (--fill ffill)" in err
    history = json.loads((tmp_path / "g" / "history.json").read_text())
    assert history["data"]["filled_values"] == 1 and history["data"]["files"]["fill"] == "ffill"
