"""K-fold cross-validation splits for small datasets: stratified by class for classifiers, plain
shuffled folds for regressors. The test split is never touched."""

from __future__ import annotations

import numpy as np

from ..data import SequenceData, Splits
from ..train import merge


def kfold_indices(targets: np.ndarray, k: int, seed: int, *, stratify: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs; every index is in exactly one validation fold. With
    ``stratify`` each class is dealt round-robin over the folds after a seeded shuffle, so every
    fold holds each class in proportion (classes rarer than ``k`` land in some folds only)."""
    n = len(targets)
    if k < 2:
        raise ValueError(f"cv: needs at least 2 folds, got {k}")
    if k > n:
        raise ValueError(f"cv: {k} folds for {n} sequences; use at most {n}")
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


def cv_splits(splits: Splits, k: int, seed: int) -> list[Splits]:
    """Train + validation merged, then cut into ``k`` folds; each fold keeps the original test split."""
    pool: SequenceData = merge(splits.train, splits.val)
    stratify = pool.task == "classification"
    return [
        Splits(f"{splits.name}[fold {i + 1}/{k}]", pool.subset(train), pool.subset(val), splits.test)
        for i, (train, val) in enumerate(kfold_indices(pool.targets, k, seed, stratify=stratify))
    ]
