"""NumPy ``.npz`` files: ``X`` and ``y``, and ``lengths`` where ``X`` is padded.

``X`` is either an object array of ``[T_i, F]`` arrays (``[T_i]`` for one feature), or one padded
numeric array ``[N, T, F]`` (``[N, T]`` for one feature) with ``lengths`` ``[N]`` (all ``T`` without
it); ``y`` holds labels (text, integers) or numbers, ``[N]`` or ``[N, O]``. An object array is stored
as a pickle, so only such files are read with ``allow_pickle``: train only on files you trust."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from .raw import DataFileError, RawSet, located

KEYS = ("X", "y", "lengths")


def read_npz(path: Path) -> RawSet:
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = list(npz.files)
            missing = [k for k in ("X", "y") if k not in present]
            if missing:
                raise located(path, f"no array {missing[0]!r}: an .npz needs X and y (lengths optional); it holds: "
                              + (", ".join(present) or "nothing"))
            arrays = {k: _load(path, npz, k) for k in KEYS if k in present}
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise located(path, f"not a readable .npz file: {exc}") from None
    sequences = _sequences(path, arrays["X"], arrays.get("lengths"))
    y = arrays["y"]
    if len(y) != len(sequences):
        raise located(path, f"y has {len(y)} values for {len(sequences)} series in X")
    if y.dtype.kind in "USO":
        targets, kind = y.astype(str), "text"
    elif y.dtype.kind in "iub":
        targets, kind = y.astype(np.int64), "integer"
    elif y.dtype.kind == "f":
        targets, kind = y.astype(np.float64), "float"
    else:
        raise located(path, f"y holds {y.dtype} values: labels (text, integers) or numbers are expected")
    width = sequences[0].shape[1] if sequences else 0
    return RawSet(path, sequences, targets, kind, [f"series {i} (X[{i}])" for i in range(len(sequences))],
                  [f"feature {f}" for f in range(width)], "y")


def _load(path: Path, npz, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError:  # an object array: stored as a pickle
        with np.load(path, allow_pickle=True) as again:
            return again[key]


def _sequences(path: Path, X: np.ndarray, lengths: np.ndarray | None) -> list[np.ndarray]:
    if X.dtype == object:
        if lengths is not None:
            raise located(path, "lengths is only for a padded numeric X; X is an object array of series")
        return [_series(path, x, i) for i, x in enumerate(X)]
    if X.dtype.kind not in "iuf" or X.ndim not in (2, 3):
        raise located(path, f"X is {X.dtype} of shape {X.shape}: expected numbers [N, T, F] or [N, T], or an "
                      "object array of [T, F] arrays")
    X = X[:, :, None] if X.ndim == 2 else X
    if lengths is None:
        lengths = np.full(len(X), X.shape[1])
    if lengths.shape != (len(X),) or lengths.dtype.kind not in "iu":
        raise located(path, f"lengths must be {len(X)} integers (one per series in X), got {lengths.dtype} "
                      f"{lengths.shape}")
    out = []
    for i, n in enumerate(lengths):
        if not 0 <= n <= X.shape[1]:
            raise located(path, f"length {n} is outside 0..{X.shape[1]} (X's time axis)",
                          series=f"series {i} (X[{i}])", column="lengths")
        out.append(X[i, : int(n)].astype(np.float64))
    return out


def _series(path: Path, x, i: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf" or arr.ndim not in (1, 2):
        raise located(path, f"{arr.dtype} of shape {arr.shape}: each series must be numbers [T, F] or [T]",
                      series=f"series {i} (X[{i}])")
    return (arr[:, None] if arr.ndim == 1 else arr).astype(np.float64)


def write_npz(path: Path, sequences: list[np.ndarray], targets) -> Path:
    """The padded form, readable without pickles: ``X`` [N, T, F] float64 (zeros past each length),
    ``lengths`` [N], ``y``."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    X = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float64)
    for i, s in enumerate(sequences):
        X[i, : len(s)] = s
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=X, lengths=lengths, y=np.asarray(targets))
    return path
