"""Cross-validation folds: a partition of train+val, stratified by class, test split untouched."""

from __future__ import annotations

import numpy as np
import pytest

from rnnserve.models.data import stratified_folds, synthetic_splits
from rnnserve.models.search.folds import cv_splits


def test_folds_partition_the_data_and_keep_class_proportions():
    targets = np.array([0] * 50 + [1] * 30 + [2] * 20)
    folds = stratified_folds(targets, 5, seed=0, stratify=True, option="cv")
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(100))  # every sequence validates exactly once
    for train, v in folds:
        assert not set(train) & set(v) and len(train) + len(v) == 100
        assert np.bincount(targets[v], minlength=3).tolist() == [10, 6, 4]


def test_folds_are_seeded():
    targets = np.arange(40) % 4
    a = stratified_folds(targets, 4, seed=1, stratify=True, option="cv")
    b = stratified_folds(targets, 4, seed=1, stratify=True, option="cv")
    c = stratified_folds(targets, 4, seed=2, stratify=True, option="cv")
    assert all((x[1] == y[1]).all() for x, y in zip(a, b, strict=True))
    assert any((x[1] != y[1]).any() for x, y in zip(a, c, strict=True))


def test_cv_splits_merge_train_and_val_and_keep_test():
    splits = synthetic_splits(n=90, seed=0)
    folds = cv_splits(splits, 3, seed=0)
    pool = len(splits.train) + len(splits.val)
    assert [len(f.train) + len(f.val) for f in folds] == [pool] * 3
    assert sum(len(f.val) for f in folds) == pool
    assert all(f.test is splits.test for f in folds)


def test_regression_folds_are_unstratified_and_fold_counts_are_checked():
    splits = synthetic_splits(n=60, seed=0, task="regression")
    assert len(cv_splits(splits, 2, seed=0)) == 2
    with pytest.raises(ValueError, match="cv: needs at least 2 folds"):
        stratified_folds(np.zeros(10), 1, seed=0, stratify=False, option="cv")
    with pytest.raises(ValueError, match="cv: 20 folds for 10 sequences"):
        stratified_folds(np.zeros(10), 20, seed=0, stratify=False, option="cv")
