"""``rnnserve datasets --export NAME DIR``: a shipped dataset's official train and test splits written
as the files ``rnnserve train --data`` reads (``.ts`` through aeon's writer, long-format ``.csv``,
padded ``.npz``), so a user sees each format filled with real data, and tests and the training
benchmark read real data through the file path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import aeon_datasets, aeon_file, channels_last
from .arrays import write_npz
from .tabular import write_csv
from .tsfile import write_ts

SUFFIXES = (".ts", ".csv", ".npz")


def export_dataset(name: str, out_dir: Path, suffixes=SUFFIXES) -> list[Path]:
    """``<out_dir>/<name>_TRAIN<suffix>`` and ``_TEST<suffix>`` for each suffix; returns the paths."""
    from aeon.datasets import load_from_ts_file

    regression = aeon_datasets("regression")
    if name not in aeon_datasets() + regression:
        raise ValueError(f"--export: {name!r} is not a dataset shipped with aeon; choose one of: "
                         + ", ".join(aeon_datasets() + regression))
    task = "regression" if name in regression else "classification"
    written = []
    for split in ("TRAIN", "TEST"):
        X, y = load_from_ts_file(str(aeon_file(name, split)))
        sequences = channels_last(X, np.float64)
        for suffix in suffixes:
            path = Path(out_dir) / f"{name}_{split}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".ts":
                written.append(write_ts(path, sequences, y, task))
            elif suffix == ".csv":
                written.append(write_csv(path, sequences, y))
            else:
                written.append(write_npz(path, sequences, y))
    return written
