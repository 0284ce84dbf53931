"""What every file reader returns, before the task is known: float64 ``[T_i, F]`` series that may
still hold NaN or inf, the targets as read, and how to name each series and feature in an error.
Also the one error type (a ``ValueError``: the CLI prints it as one line and exits 2), the checks
every format shares (length 0, feature counts, non-finite cells) and ``--fill``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILLS = ("zero", "ffill", "linear")


class DataFileError(ValueError):
    """A bad data file: the message names the file, the row or series, and the column."""


def located(path: Path, what: str, *, line: int | None = None, series: str | None = None,
            column: str | None = None) -> DataFileError:
    """``path, line 12 (series 'a'), column 'x': what``, the parts that are known."""
    where = f"line {line}" if line is not None else ""
    if series is not None:
        where = f"{where} ({series})" if where else series
    parts = [str(path)] + ([where] if where else [])
    head = ", ".join(parts) + (f", column {column!r}" if column is not None else "")
    return DataFileError(f"{head}: {what}")


@dataclass(frozen=True)
class RawSet:
    path: Path
    sequences: list[np.ndarray]  # float64 [T_i, F]; NaN / inf still possible
    targets: np.ndarray  # text labels (str), or numbers: [N] or [N, O]
    kind: str  # text | integer | float: what the targets are, for the task rule
    series: list[str]  # each series as errors name it: "series 'a'", "series 3 (line 12)"
    features: list[str]  # each feature as errors name it: "x1", "dimension 0"
    target_column: str  # the targets as errors name them
    step_lines: list[np.ndarray] | None = None  # file line of every step (long-format tables)

    def where(self, i: int, step: int) -> dict:
        """``located`` keywords for step ``step`` of series ``i``."""
        if self.step_lines is not None:
            return {"line": int(self.step_lines[i][step]), "series": f"{self.series[i]}, step {step}"}
        return {"series": f"{self.series[i]}, step {step}"}


def check_shapes(raw: RawSet) -> None:
    """Every series has at least one step and the first series' feature count."""
    width = raw.sequences[0].shape[1] if raw.sequences else 0
    for i, seq in enumerate(raw.sequences):
        if len(seq) == 0:
            raise located(raw.path, "a series of length 0 (no time steps): remove it or give it data",
                          series=raw.series[i])
        if seq.shape[1] != width:
            raise located(raw.path, f"{seq.shape[1]} features, but {raw.series[0]} has {width}: every series "
                          "needs the same features", series=raw.series[i])


def fill_missing(raw: RawSet, fill: str | None) -> tuple[list[np.ndarray], int]:
    """The series with NaN / inf cells filled as ``fill`` says (refused without it); and how many
    cells were filled. ``zero``: 0; ``ffill``: the last value seen in the series (the first one seen
    before it); ``linear``: interpolated in time between the nearest values seen (ends held)."""
    if fill is not None and fill not in FILLS:
        raise ValueError(f"--fill: one of {', '.join(FILLS)}, got {fill!r}")
    out, filled = [], 0
    for i, seq in enumerate(raw.sequences):
        bad = ~np.isfinite(seq)
        if not bad.any():
            out.append(seq)
            continue
        step, col = (int(v[0]) for v in np.nonzero(bad))
        if fill is None:
            value = "NaN (missing)" if np.isnan(seq[step, col]) else f"{seq[step, col]} (not finite)"
            raise located(raw.path, f"{value}; missing and infinite values are refused unless --fill "
                          f"{'|'.join(FILLS)} says how to fill them", column=raw.features[col], **raw.where(i, step))
        out.append(_filled(raw, i, seq, bad, fill))
        filled += int(bad.sum())
    return out, filled


def _filled(raw: RawSet, i: int, seq: np.ndarray, bad: np.ndarray, fill: str) -> np.ndarray:
    seq = seq.copy()
    if fill == "zero":
        seq[bad] = 0.0
        return seq
    steps = np.arange(len(seq))
    for col in np.nonzero(bad.any(axis=0))[0]:
        good = ~bad[:, col]
        if not good.any():
            raise located(raw.path, f"every value of this series is missing: --fill {fill} has nothing to fill "
                          "from (--fill zero, or remove the series)", series=raw.series[i], column=raw.features[col])
        if fill == "linear":
            seq[:, col] = np.interp(steps, steps[good], seq[good, col])
        else:  # ffill: index of the last good step at or before each step; before the first, the first
            last = np.maximum.accumulate(np.where(good, steps, -1))
            seq[:, col] = seq[np.where(last >= 0, last, int(np.argmax(good))), col]
    return seq
