"""The UCR/UEA archive's ``.ts`` format, through aeon's own reader and writer: classification labels
(``@classLabel true ...``) or regression targets (``@targetLabel true``), equal or unequal lengths,
univariate or multivariate. aeon's reader stops at the first bad value without saying where, so on
failure the file is scanned once more to name the line and the dimension."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import channels_last
from .raw import RawSet, located


def read_ts(path: Path) -> RawSet:
    from aeon.datasets import load_from_ts_file

    try:
        X, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, IndexError) as exc:
        _diagnose(path)
        raise located(path, f"not a readable .ts file: {exc}") from None
    if not (meta["classlabel"] or meta["targetlabel"]):
        raise located(path, "no targets: the header has neither @classLabel true nor @targetLabel true")
    first = _data_line(path) + 1
    sequences = channels_last(X, np.float64)
    channels = sequences[0].shape[1] if sequences else 0
    if meta["targetlabel"]:
        targets, kind = np.asarray(y, dtype=np.float64), "float"
    else:
        targets, kind = np.asarray(y).astype(str), "text"
    return RawSet(path, sequences, targets, kind, [f"the series on line {first + i}" for i in range(len(sequences))],
                  [f"dimension {c}" for c in range(channels)], "the target after the last ':'")


def _data_line(path: Path) -> int:
    """The 1-based line number of ``@data``."""
    with path.open(errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip().lower().startswith("@data"):
                return number
    raise located(path, "no @data line: not a .ts file")


def _diagnose(path: Path) -> None:
    """Raise the first problem a scan of the data lines finds (dimension count, an empty dimension,
    a value that is not a number, a missing target); return if it finds none."""
    header, start = [], _data_line(path)
    with path.open(errors="replace") as fh:
        lines = fh.read().splitlines()
    header = [line.strip().lower().split() for line in lines[: start - 1]]
    if any(h[:2] == ["@timestamps", "true"] for h in header):
        return  # timestamped values: leave the message to aeon
    has_target = any(h[:2] in (["@classlabel", "true"], ["@targetlabel", "true"]) for h in header)
    width = None
    for number, line in enumerate(lines[start:], start + 1):
        parts = line.strip().split(":")
        channels = parts[:-1] if has_target else parts
        if has_target and (len(parts) < 2 or not parts[-1].strip()):
            raise located(path, "missing target after the last ':'", line=number)
        width = len(channels) if width is None else width
        if len(channels) != width:
            raise located(path, f"{len(channels)} dimensions, but the first series has {width}: every series needs "
                          "the same features", line=number)
        for c, channel in enumerate(channels):
            if not channel.strip():
                raise located(path, "no values: a series of length 0", line=number, column=f"dimension {c}")
            for value in channel.split(","):
                if value.strip().lower() in ("?", "nan"):
                    continue
                try:
                    float(value)
                except ValueError:
                    raise located(path, f"{value.strip()!r} is not a number", line=number,
                                  column=f"dimension {c}") from None


def write_ts(path: Path, sequences: list[np.ndarray], targets: np.ndarray, task: str) -> Path:
    """``sequences`` ([T_i, C] arrays) with their labels or targets as ``path`` (a ``.ts`` file)."""
    from aeon.datasets import save_to_ts_file

    save_to_ts_file([np.asarray(s, dtype=np.float64).T for s in sequences], np.asarray(targets), label_type=task,
                    path=str(path.parent), problem_name=path.stem)
    return path
