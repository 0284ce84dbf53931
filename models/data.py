"""Sequence datasets: the classification and regression sets shipped inside the ``aeon`` wheel, a
seeded synthetic variable-length set for tests, and the splits every source shares (the user's own
files are read by ``models/files``). Nothing here downloads anything.

Sequences are stored as a list of float32 arrays shaped ``[T_i, F]`` (time first), ragged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SequenceData:
    sequences: tuple[np.ndarray, ...]
    targets: np.ndarray  # int64 class indices, or float32 [N, O] for regression
    labels: tuple[str, ...]  # class names (empty for regression)
    task: str = "classification"

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_features(self) -> int:
        return int(self.sequences[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    @property
    def output_size(self) -> int:
        return len(self.labels) if self.task == "classification" else int(self.targets.shape[1])

    def subset(self, index) -> SequenceData:
        index = np.asarray(index, dtype=np.int64)
        return SequenceData(
            tuple(self.sequences[i] for i in index), self.targets[index], self.labels, self.task
        )


@dataclass(frozen=True)
class Splits:
    name: str
    train: SequenceData
    val: SequenceData
    test: SequenceData


def _aeon_root() -> Path:
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data"


def aeon_datasets(task: str = "classification") -> list[str]:
    """Datasets of ``task`` (classification or regression) the installed aeon wheel ships with a
    train/test split (usable offline), as their ``.ts`` header declares them."""
    root = _aeon_root()
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and (d / f"{d.name}_TEST.ts").exists() and _ts_task(d / f"{d.name}_TRAIN.ts") == task
    )


def _ts_task(ts_file: Path) -> str | None:
    """``classification`` (``@classLabel true``), ``regression`` (``@targetLabel true``) or None."""
    if not ts_file.exists():
        return None
    with ts_file.open(errors="replace") as fh:
        for line in fh:
            low = line.strip().lower()
            if low.startswith("@classlabel") and low.split()[1:2] == ["true"]:
                return "classification"
            if low.startswith("@targetlabel") and low.split()[1:2] == ["true"]:
                return "regression"
            if low.startswith("@data"):
                return None
    return None


def aeon_file(name: str, split: str) -> Path:
    """The ``.ts`` file of a shipped dataset's ``train`` or ``test`` split."""
    return _aeon_root() / name / f"{name}_{split.upper()}.ts"


def channels_last(X, dtype=np.float32) -> list[np.ndarray]:
    """aeon's collection (``[n, C, T]`` array or list of ``[C, T_i]``) -> ``[T_i, C]`` arrays."""
    return [np.ascontiguousarray(np.asarray(x, dtype=dtype).T) for x in X]


def _aeon_split(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    import aeon.datasets

    X, y = aeon.datasets.load_from_ts_file(str(aeon_file(name, split)))
    return channels_last(X), y


def load_aeon(name: str, *, val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Load a shipped aeon dataset (classification or regression) with its official train/test
    split; ``val_fraction`` of the training split is held out for early stopping (stratified by
    class for classification, at random for regression: ``holdout``)."""
    available = aeon_datasets() + aeon_datasets("regression")
    if name not in available:
        raise ValueError(
            f"dataset {name!r} is not shipped with aeon (offline only); choose one of: "
            + ", ".join(available)
        )
    train_x, train_y = _aeon_split(name, "train")
    test_x, test_y = _aeon_split(name, "test")
    for seqs in (train_x, test_x):
        bad = [i for i, s in enumerate(seqs) if len(s) == 0 or not np.isfinite(s).all()]
        if bad:
            raise ValueError(f"dataset {name!r} has empty or non-finite sequences at {bad[:5]}")
    if name in aeon_datasets("regression"):
        full = regression_data(train_x, train_y)
        test = regression_data(test_x, test_y)
    else:
        labels = class_labels([str(v) for v in train_y], [str(v) for v in test_y])
        full = classification_data(train_x, [str(v) for v in train_y], labels)
        test = classification_data(test_x, [str(v) for v in test_y], labels)
    return holdout(name, full, test, val_fraction, seed)


def class_labels(*label_lists) -> tuple[str, ...]:
    """Every label that occurs, numbers in numeric order first (``"2" < "10"``), then text."""
    return tuple(sorted(set().union(*map(set, label_lists)), key=_label_key))


def classification_data(sequences, labels_of_series, labels: tuple[str, ...]) -> SequenceData:
    index = {label: i for i, label in enumerate(labels)}
    return SequenceData(tuple(sequences), np.array([index[y] for y in labels_of_series], dtype=np.int64), labels)


def regression_data(sequences, targets) -> SequenceData:
    """Targets ``[N]`` or ``[N, O]`` as float32 ``[N, O]``."""
    y = np.asarray(targets, dtype=np.float32)
    return SequenceData(tuple(sequences), y.reshape(len(y), -1), (), "regression")


def holdout(name: str, full: SequenceData, test: SequenceData, val_fraction: float, seed: int) -> Splits:
    """``test`` as given; ``val_fraction`` of ``full`` held out for validation (stratified by class,
    or at random for regression), the rest trains."""
    train_idx, val_idx = split_indices(full, val_fraction, seed)
    return Splits(name, full.subset(train_idx), full.subset(val_idx), test)


def split_indices(data: SequenceData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices, sorted: a stratified split for classification, a random one for
    regression."""
    if data.task == "classification":
        return stratified_split(data.targets, fraction, seed)
    return random_split(len(data), fraction, seed)


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    held = np.random.default_rng(seed).permutation(n)[: int(round(n * fraction))]
    kept = np.setdiff1d(np.arange(n), held)
    return kept.astype(np.int64), np.sort(held).astype(np.int64)


def _label_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def stratified_split(targets: np.ndarray, fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def stratified_folds(targets: np.ndarray, k: int, seed: int, *, stratify: bool = True,
                     option: str = "folds") -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs; every index is validated exactly once. With
    ``stratify`` each class is dealt round-robin over the folds after a seeded shuffle, so each
    fold holds the classes in proportion (classes rarer than ``k`` land in some folds only).
    ``option`` names the setting in errors (``train --folds``, ``search --cv``)."""
    n = len(targets)
    if k < 2:
        raise ValueError(f"{option}: needs at least 2 folds, got {k}")
    if k > n:
        raise ValueError(f"{option}: {k} folds for {n} sequences; use at most {n}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    if stratify:
        offset = 0
        for cls in np.unique(targets):
            idx = rng.permutation(np.flatnonzero(targets == cls))
            fold_of[idx] = (np.arange(len(idx)) + offset) % k
            offset += len(idx)  # continue the deal where the last class stopped: folds stay balanced in size
    else:
        fold_of[rng.permutation(n)] = np.arange(n) % k
    everything = np.arange(n)
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


def synthetic(
    n: int = 256,
    *,
    num_features: int = 4,
    num_classes: int = 3,
    min_len: int = 3,
    max_len: int = 40,
    task: str = "classification",
    seed: int = 0,
) -> SequenceData:
    """Seeded variable-length data with a learnable signal: class ``k`` is a sinusoid of frequency
    ``k + 1`` in feature 0 plus noise; regression targets are each sequence's mean of feature 0."""
    rng = np.random.default_rng(seed)
    seqs, targets = [], []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        cls = int(rng.integers(num_classes))
        t = np.linspace(0.0, 2 * np.pi, length, dtype=np.float32)
        x = rng.normal(0.0, 0.3, size=(length, num_features)).astype(np.float32)
        x[:, 0] += np.sin((cls + 1) * t + rng.uniform(0, 0.5))
        seqs.append(x)
        targets.append(cls if task == "classification" else [float(x[:, 0].mean())])
    if task == "classification":
        labels = tuple(f"class_{k}" for k in range(num_classes))
        return SequenceData(tuple(seqs), np.array(targets, dtype=np.int64), labels, task)
    return SequenceData(tuple(seqs), np.array(targets, dtype=np.float32), (), task)


def synthetic_splits(n: int = 800, **kwargs) -> Splits:
    """70/15/15 split; the default size gives a 120-sequence held-out split (the drift reference)."""
    data = synthetic(n, **kwargs)
    n = len(data)
    return Splits(
        "synthetic",
        data.subset(range(0, int(n * 0.7))),
        data.subset(range(int(n * 0.7), int(n * 0.85))),
        data.subset(range(int(n * 0.85), n)),
    )


def load_dataset(name: str, *, seed: int = 0) -> Splits:
    if name == "synthetic":
        return synthetic_splits(seed=seed)
    if name == "synthetic-regression":
        s = synthetic_splits(seed=seed, task="regression")
        return Splits(name, s.train, s.val, s.test)
    return load_aeon(name, seed=seed)


def feature_stats(data: SequenceData) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean / std over every real timestep (the model's input normalisation)."""
    allsteps = np.concatenate(data.sequences, axis=0).astype(np.float64)
    return allsteps.mean(axis=0).astype(np.float32), allsteps.std(axis=0).astype(np.float32)
