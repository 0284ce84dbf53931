"""Long-format tables: one row per time step, a series id column, a target column constant within a
series, an optional time column that orders the steps, and feature columns (by default every other
column). Series keep the order in which their ids first appear; without a time column their steps
keep the file's order. Every cell is read as text first, so an error can quote it and name its line
(the header is line 1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .raw import RawSet, located

MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}  # cells read as missing values (lower-cased)
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Columns:
    """Which columns are what. ``time`` None: the column named ``time`` if the table has one, else
    the rows' order; ``features`` None: every column that is not the id, time or target."""

    id: str = "id"
    time: str | None = None
    target: str = "target"
    features: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "time": self.time, "target": self.target,
                "features": None if self.features is None else list(self.features)}


def read_csv(path: Path, columns: Columns) -> RawSet:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise located(path, "the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise located(path, f"not a readable CSV table: {str(exc).strip().splitlines()[0]}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return from_table(path, frame, columns)


def _pick_columns(path: Path, names: list[str], columns: Columns) -> tuple[str | None, list[str]]:
    """(time column or None, feature columns); every named column must exist."""
    listed = ", ".join(names)
    wanted = [(columns.id, "--id-col"), (columns.target, "--target-col")]
    wanted += [(columns.time, "--time-col")] if columns.time is not None else []
    wanted += [(f, "--feature-cols") for f in columns.features or ()]
    for name, option in wanted:
        if name not in names:
            raise located(path, f"not found ({option}); the columns are: {listed}", column=name)
    time = columns.time if columns.time is not None else ("time" if "time" in names else None)
    roles = {columns.id, columns.target, time}
    features = list(columns.features) if columns.features is not None else [n for n in names if n not in roles]
    clash = [f for f in features if f in roles]
    if clash:
        raise located(path, "is the id, time or target column and cannot also be a feature", column=clash[0])
    if not features:
        raise located(path, f"no feature columns: the columns are {listed} (--feature-cols names them)")
    return time, features


def from_table(path: Path, frame, columns: Columns) -> RawSet:
    """A long-format table (every cell text) -> RawSet."""
    import pandas as pd

    time, features = _pick_columns(path, list(frame.columns), columns)
    if len(frame) == 0:
        raise located(path, "no data rows under the header")
    ids = frame[columns.id].str.strip().to_numpy(dtype=object)
    empty = np.flatnonzero(ids == "")
    if len(empty):
        raise located(path, "empty series id", line=int(empty[0]) + 2, column=columns.id)
    codes, uniques = pd.factorize(ids, sort=False)  # series in the order their ids first appear
    names = [f"series {str(u)!r}" for u in uniques]
    values = np.column_stack([_numbers(path, frame[f], f, ids) for f in features])
    order = _step_order(path, frame, time, codes, ids) if time else np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    rows = np.split(order, bounds)
    targets, kind = _series_targets(path, frame[columns.target], columns.target, codes, ids, len(uniques))
    return RawSet(path, [values[r] for r in rows], targets, kind, names, features, columns.target,
                  step_lines=[r + 2 for r in rows])


def _numbers(path: Path, column, name: str, ids) -> np.ndarray:
    """A feature column as float64: missing cells NaN (refused later unless --fill), anything else
    that is not a number refused here."""
    import pandas as pd

    text = column.str.strip()
    missing = text.str.lower().isin(MISSING).to_numpy()
    values = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & ~missing)
    if len(bad):
        i = int(bad[0])
        raise located(path, f"{text.iloc[i]!r} is not a number", line=i + 2, series=f"series {ids[i]!r}", column=name)
    return values


def _step_order(path: Path, frame, time: str, codes: np.ndarray, ids) -> np.ndarray:
    """Row order: by series (first appearance), then by the time column (numbers or ISO 8601 dates)."""
    import pandas as pd

    text = frame[time].str.strip()
    stamps = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(stamps).any():  # not all numbers: dates, if more of the column reads as dates
        dates = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if dates.isna().sum() < np.isnan(stamps).sum():
            stamps = dates.to_numpy().astype("datetime64[ns]").astype(np.int64).astype(np.float64)
            stamps[dates.isna().to_numpy()] = np.nan
    bad = np.flatnonzero(np.isnan(stamps))
    if len(bad):
        i = int(bad[0])
        raise located(path, f"{text.iloc[i]!r} is neither a number nor an ISO 8601 date (the time column orders "
                      "the steps of a series)", line=i + 2, series=f"series {ids[i]!r}", column=time)
    order = np.lexsort((stamps, codes))
    same = np.flatnonzero((np.diff(codes[order]) == 0) & (np.diff(stamps[order]) == 0))
    if len(same):
        a, b = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        raise located(path, f"a second step at time {text.iloc[b]!r} (the first is on line {a + 2})",
                      line=b + 2, series=f"series {ids[b]!r}", column=time)
    return order


def _series_targets(path: Path, column, name: str, codes: np.ndarray, ids, n: int) -> tuple[np.ndarray, str]:
    """One target per series (the same on each of its rows), and what kind of values they are."""
    import pandas as pd

    text = column.str.strip().to_numpy(dtype=object)
    empty = np.flatnonzero(np.isin([t.lower() for t in text], list(MISSING)))
    if len(empty):
        i = int(empty[0])
        raise located(path, "missing target (a series needs one on every row)", line=i + 2,
                      series=f"series {ids[i]!r}", column=name)
    first = np.zeros(n, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # each series' first row
    numeric = pd.to_numeric(pd.Series(text), errors="coerce").to_numpy(dtype=np.float64)
    differs = (text != text[first[codes]]) & ~(numeric == numeric[first[codes]])
    if differs.any():
        i = int(np.argmax(differs))
        j = int(first[codes[i]])
        raise located(path, f"target {text[i]!r} differs from {text[j]!r} on line {j + 2}: the target must be the "
                      "same on every row of a series", line=i + 2, series=f"series {ids[i]!r}", column=name)
    per_series, values = text[first], numeric[first]
    if np.isnan(values).any():
        return per_series.astype(str), "text"
    if all(_INTEGER.match(t) for t in per_series):
        return values.astype(np.int64), "integer"
    return values, "float"


def write_csv(path: Path, sequences: list[np.ndarray], targets, names: tuple[str, ...] | None = None) -> Path:
    """``sequences`` ([T_i, F] arrays) in long format: ``id, time, <features>, target``, one row per
    step, ids 0..N-1, times 0..T_i-1; features ``dim_0 ..`` unless ``names`` gives them. Numbers are
    written in their shortest round-trip form, so reading the file back gives the same float64."""
    import pandas as pd

    width = sequences[0].shape[1]
    names = names or tuple(f"dim_{f}" for f in range(width))
    lengths = [len(s) for s in sequences]
    frame = pd.DataFrame(np.concatenate(sequences).astype(np.float64), columns=list(names))
    frame.insert(0, "time", np.concatenate([np.arange(n) for n in lengths]))
    frame.insert(0, "id", np.repeat(np.arange(len(sequences)), lengths))
    frame["target"] = np.repeat(np.asarray(targets), lengths)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
