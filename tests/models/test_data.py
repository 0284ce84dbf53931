import numpy as np
import pytest

from rnnserve.bundle.batch import pad
from rnnserve.models.data import aeon_datasets, load_aeon, load_dataset, synthetic


def test_japanese_vowels_ships_offline_with_official_split():
    splits = load_aeon("JapaneseVowels")
    assert len(splits.train) + len(splits.val) == 270 and len(splits.test) == 370
    assert splits.train.num_features == 12 and len(splits.train.labels) == 9
    lengths = np.concatenate([splits.train.lengths, splits.val.lengths, splits.test.lengths])
    assert lengths.min() == 7 and lengths.max() == 29
    # stratified hold-out: every class is present in the validation split
    assert set(splits.val.targets.tolist()) == set(range(9))


def test_only_classification_datasets_are_listed():
    names = aeon_datasets()
    assert "JapaneseVowels" in names and "BasicMotions" in names
    assert "Covid3Month" not in names  # regression set shipped by aeon


def test_regression_sets_shipped_with_aeon_load_with_a_random_validation_split():
    assert {"Covid3Month", "CardanoSentiment"} <= set(aeon_datasets("regression"))
    assert "Covid3Month_disc" in aeon_datasets()  # its labels 0.0/1.0/2.0 are classes
    splits = load_dataset("CardanoSentiment", seed=1)
    assert splits.train.task == "regression" and splits.train.labels == ()
    assert splits.train.targets.shape == (59, 1) and splits.train.targets.dtype == np.float32
    assert len(splits.val) == 15 and len(splits.test) == 33 and splits.train.num_features == 2
    again = load_dataset("CardanoSentiment", seed=1)
    assert np.array_equal(again.val.targets, splits.val.targets)
    assert not np.array_equal(load_dataset("CardanoSentiment", seed=2).val.targets, splits.val.targets)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="not shipped with aeon.*JapaneseVowels"):
        load_aeon("NoSuchDataset")


def test_univariate_unequal_length_dataset_loads():
    splits = load_dataset("PickupGestureWiimoteZ")
    assert splits.train.num_features == 1
    assert len(set(splits.test.lengths.tolist())) > 5


def test_synthetic_is_seeded_and_variable_length():
    a, b = synthetic(50, seed=3), synthetic(50, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
    assert len(set(a.lengths.tolist())) > 10


def test_pad_right_pads_with_zeros():
    x, lengths = pad([np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)])
    assert x.shape == (2, 4, 3) and lengths.tolist() == [2, 4]
    assert x[0, 2:].sum() == 0 and x.dtype == np.float32
