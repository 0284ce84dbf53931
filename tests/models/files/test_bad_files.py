"""Every bad-file case is refused with one line naming the file, the row or series, and the column;
`rnnserve train` exits 2 and writes nothing (no training directory, nothing in the model store)."""

from __future__ import annotations

import numpy as np
import pytest

from rnnserve.cli import main

# Four series of three steps: ids a..d, classes u/v, features x1 (time x 0.5) and x2 (a per-series number).
ROWS = [(s, t, t * 0.5, 10 + i, c) for i, (s, c) in enumerate(zip("abcd", "uvuv", strict=True)) for t in range(3)]


def table(rows=ROWS, header="id,time,x1,x2,target") -> str:
    return header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows)


def edit(line: int, column: int, value) -> str:
    """The table with the cell at file line ``line`` (header = 1), column index ``column`` replaced."""
    rows = [list(r) for r in ROWS]
    rows[line - 2][column] = value
    return table(rows)


def refuse(tmp_path, capsys, name: str, content, *options: str) -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.savez(path, **content)
    work = tmp_path / "work"
    rc = main(["train", "--data", str(path), "--workdir", str(work), "--name", "m", "--epochs", "1", *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert not work.exists()  # nothing written: no checkpoint, no history, nothing to export
    assert len(err) == 1 and err[0].startswith(f"[rnnserve] error: {path}"), err
    return err[0].removeprefix(f"[rnnserve] error: {path}")


CSV_CASES = {
    "missing column": (table(header="id,time,x1,x2,label"), (),
                       ", column 'target': not found (--target-col); the columns are: id, time, x1, x2, label"),
    "missing feature column": (table(), ("--feature-cols", "x1,x3"),
                               ", column 'x3': not found (--feature-cols); the columns are: id, time, x1, x2, target"),
    "non-numeric cell": (edit(6, 2, "abc"), (), ", line 6 (series 'b'), column 'x1': 'abc' is not a number"),
    "decimal comma": (edit(3, 3, '"1,5"'), (), ", line 3 (series 'a'), column 'x2': '1,5' is not a number"),
    "NaN": (edit(10, 3, ""), (), ", line 10 (series 'c', step 2), column 'x2': NaN (missing); missing and infinite "
            "values are refused unless --fill zero|ffill|linear says how to fill them"),
    "inf": (edit(9, 2, "inf"), (), ", line 9 (series 'c', step 1), column 'x1': inf (not finite); missing and "
            "infinite values are refused unless --fill zero|ffill|linear says how to fill them"),
    "target changes within a series": (edit(13, 4, "u"), (), ", line 13 (series 'd'), column 'target': target 'u' "
                                       "differs from 'v' on line 11: the target must be the same on every row of a "
                                       "series"),
    "missing target": (edit(4, 4, ""), (), ", line 4 (series 'a'), column 'target': missing target (a series needs "
                       "one on every row)"),
    "class with one series": (table(ROWS + [("e", t, 0.0, 20, "w") for t in range(3)]), (),
                              ", series 'e', column 'target': class 'w' has this one series only: a stratified split "
                              "needs at least 2 series per class (add series of it, or give --test-data)"),
    "two rows at one time": (edit(4, 1, 1), (), ", line 4 (series 'a'), column 'time': a second step at time '1' (the "
                             "first is on line 3)"),
    "time that is not a time": (edit(7, 1, "soon"), (), ", line 7 (series 'b'), column 'time': 'soon' is neither a "
                                "number nor an ISO 8601 date (the time column orders the steps of a series)"),
    "empty series id": (edit(5, 0, ""), (), ", line 5, column 'id': empty series id"),
    "no data rows": (table([]), (), ": no data rows under the header"),
    "empty file": ("", (), ": the file is empty"),
    "over the size limit": (table(), ("--max-file-mb", "0.0001"), ": 0.000169 MB is over the 0.0001 MB limit on data "
                            "files; if the file is meant, raise it: --max-file-mb 1"),
    "too few series": (table(), (), ": too few series: 4 to train on, 0 to validate, 0 to test after the "
                       "split; at least 5 training series (validation included), one validation and one test series "
                       "are needed (more series, or more per class)"),
    "regression asked of text targets": (table(), ("--task", "regression"), ", column 'target': --task regression "
                                         "needs numbers, but the targets are text (e.g. 'u')"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_a_bad_csv_is_refused_naming_the_line_series_and_column(tmp_path, capsys, case):
    content, options, message = CSV_CASES[case]
    assert refuse(tmp_path, capsys, "train.csv", content, *options) == message


def test_a_test_file_with_other_features_is_refused(tmp_path, capsys):
    (tmp_path / "test.csv").write_text(table([r[:3] + r[4:] for r in ROWS], header="id,time,x1,target"))
    (tmp_path / "train.csv").write_text(table())
    work = tmp_path / "work"
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--test-data", str(tmp_path / "test.csv"),
                 "--workdir", str(work)]) == 2
    assert capsys.readouterr().err.strip() == (f"[rnnserve] error: {tmp_path / 'test.csv'}: 1 features per step, but "
                                               f"{tmp_path / 'train.csv'} has 2: the test file needs the training "
                                               "file's features")
    assert not work.exists()


TS_HEAD = "@problemName x\n@univariate {univariate}\n@equalLength false\n@targetLabel true\n@data\n"
TS_CASES = {
    "a series of length 0": (TS_HEAD.format(univariate="true") + "1,2,3:0.5\n:1.5\n4,5:2.5\n",
                             ", line 7, column 'dimension 0': no values: a series of length 0"),
    "feature count differs": (TS_HEAD.format(univariate="false") + "1,2,3:1,2,3:0.5\n1,2:1.5\n4,5:4,5:2.5\n",
                              ", line 7: 1 dimensions, but the first series has 2: every series needs the same "
                              "features"),
    "non-numeric value": (TS_HEAD.format(univariate="true") + "1,2,3:0.5\n1,x:1.5\n4,5:2.5\n",
                          ", line 7, column 'dimension 0': 'x' is not a number"),
    "missing value": (TS_HEAD.format(univariate="true") + "1,2,3:0.5\n1,?:1.5\n4,5:2.5\n",
                      ", the series on line 7, step 1, column 'dimension 0': NaN (missing); missing and infinite "
                      "values are refused unless --fill zero|ffill|linear says how to fill them"),
}


@pytest.mark.parametrize("case", list(TS_CASES))
def test_a_bad_ts_file_is_refused_naming_the_line_and_dimension(tmp_path, capsys, case):
    content, message = TS_CASES[case]
    assert refuse(tmp_path, capsys, "train.ts", content) == message


def _ragged(*shapes) -> np.ndarray:
    """An object array of series; a (1, 2) shape stands for a series of text cells."""
    out = np.empty(len(shapes), dtype=object)
    for i, shape in enumerate(shapes):
        out[i] = np.array([["a", "b"]]) if shape == (1, 2) else np.ones(shape)
    return out


NPZ_CASES = {
    "feature count differs": ({"X": _ragged((4, 2), (5, 3), (2, 2)), "y": np.array([0.5, 1.5, 2.5])},
                              ", series 1 (X[1]): 3 features, but series 0 (X[0]) has 2: every series needs the same "
                              "features"),
    "a series of length 0": ({"X": _ragged((4, 2), (0, 2), (2, 2)), "y": np.array([0.5, 1.5, 2.5])},
                             ", series 1 (X[1]): a series of length 0 (no time steps): remove it or give it data"),
    "length 0 in padded X": ({"X": np.ones((3, 4, 2)), "lengths": np.array([4, 0, 2]), "y": np.array([0.5, 1.5, 2.5])},
                             ", series 1 (X[1]): a series of length 0 (no time steps): remove it or give it data"),
    "non-numeric series": ({"X": _ragged((4, 2), (1, 2)), "y": np.array([1.0, 2.0])},
                           ", series 1 (X[1]): <U1 of shape (1, 2): each series must be numbers [T, F] or [T]"),
    "NaN": ({"X": np.array([[[1.0], [np.nan]], [[2.0], [3.0]], [[1.0], [1.0]]]), "y": np.array([0.5, 1.5, 2.5])},
            ", series 0 (X[0]), step 1, column 'feature 0': NaN (missing); missing and infinite values are refused "
            "unless --fill zero|ffill|linear says how to fill them"),
    "no y": ({"X": np.ones((3, 4, 2))}, ": no array 'y': an .npz needs X and y (lengths optional); it holds: X"),
    "y of the wrong length": ({"X": np.ones((3, 4, 2)), "y": np.array([1.0, 2.0])},
                              ": y has 2 values for 3 series in X"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_a_bad_npz_file_is_refused_naming_the_series(tmp_path, capsys, case):
    content, message = NPZ_CASES[case]
    assert refuse(tmp_path, capsys, "train.npz", content) == message


def test_unknown_formats_and_missing_files_are_one_line(tmp_path, capsys):
    assert refuse(tmp_path, capsys, "train.parquet", "x") == (": unknown format '.parquet': give a .ts, .csv (long "
                                                              "format) or .npz file (.parquet is not read: pyarrow is "
                                                              "not a dependency)")
    assert main(["train", "--data", str(tmp_path / "none.csv"), "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip() == f"[rnnserve] error: {tmp_path / 'none.csv'}: no such file"
    assert main(["train", "--data", "a.csv", "--dataset", "UnitTest", "--workdir", str(tmp_path / "w")]) == 2
    assert "give --dataset or --data, not both" in capsys.readouterr().err
