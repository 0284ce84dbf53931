"""K-fold cross-validation splits for small datasets: stratified by class for classifiers, plain
shuffled folds for regressors. The test split is never touched."""

from __future__ import annotations

from ..data import SequenceData, Splits, stratified_folds
from ..train import merge


def cv_splits(splits: Splits, k: int, seed: int) -> list[Splits]:
    """Train + validation merged, then cut into ``k`` folds; each fold keeps the original test split."""
    pool: SequenceData = merge(splits.train, splits.val)
    stratify = pool.task == "classification"
    return [
        Splits(f"{splits.name}[fold {i + 1}/{k}]", pool.subset(train), pool.subset(val), splits.test)
        for i, (train, val) in enumerate(stratified_folds(pool.targets, k, seed, stratify=stratify, option="cv"))
    ]
