"""Each diagnosis, provoked on synthetic data, is reported; a healthy run reports none of them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rnnserve.models.data import SequenceData, Splits, synthetic, synthetic_splits
from rnnserve.models.diagnostics import diagnose
from rnnserve.models.pipeline import train_to_dir
from rnnserve.models.train import TrainConfig, TrainingDiverged, train

QUICK = dict(hidden_size=16, num_layers=1, batch_size=16, refit=False, threads=1)


def codes(found) -> set[str]:
    return {d.code for d in found}


def run(splits: Splits, **kw):
    """Train through the pipeline `rnnserve train` uses and check that history.json and the plot (its
    PNG metadata carries the text drawn on it) report the same diagnoses as ``diagnose``."""
    config = TrainConfig(**{**QUICK, **kw})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trained = train_to_dir("synthetic", out, config, splits=splits, baseline=False)
        found = diagnose(trained.result.history, splits, config)
        assert trained.diagnoses == found
        recorded = json.loads((out / "history.json").read_text())["diagnostics"]
        assert [d["code"] for d in recorded] == [d.code for d in found]
        drawn = Image.open(out / "training.png").info["Description"]
        assert all(d.line() in drawn for d in found), drawn
    return trained.result, found


def test_a_healthy_run_reports_nothing():
    splits = synthetic_splits(n=400, seed=0)
    result, found = run(splits, epochs=25, lr=1e-2, init="chrono", noise=0.0)
    assert result.metrics["val_accuracy"] > 0.9
    assert codes(found) == set(), [d.line() for d in found]


def test_underfitting_near_chance_is_reported_with_a_remedy():
    splits = synthetic_splits(n=400, seed=0)
    _, found = run(splits, epochs=3, lr=1e-5)
    (d,) = [d for d in found if d.code == "underfitting"]
    assert "near chance" in d.finding and "--lr" in d.remedy


def _random_labels(n: int, seed: int) -> SequenceData:
    data = synthetic(n, seed=seed, min_len=20, max_len=20)
    rng = np.random.default_rng(seed)
    return SequenceData(data.sequences, rng.integers(0, 3, n).astype(np.int64), data.labels)


def test_overfitting_is_reported_when_validation_diverges_from_training():
    # Labels independent of the inputs: a 64-unit LSTM memorises 60 series, validation stays at chance.
    splits = Splits("noise", _random_labels(60, 0), _random_labels(60, 1), _random_labels(30, 2))
    result, found = run(splits, hidden_size=64, epochs=150, lr=1e-2, early_stopping=False, noise=0.0)
    assert result.history[-1]["train_accuracy"] >= 0.9
    (d,) = [d for d in found if d.code == "overfitting"]
    assert "validation" in d.finding and "augmentation" in d.remedy


def test_exploding_gradients_are_reported():
    splits = synthetic_splits(n=60, seed=1)
    result, found = run(splits, cell="rnn", epochs=2, patience=2, lr=0.5, clip_norm=1e-3)
    assert all(row["clipped_fraction"] == 1.0 for row in result.history)
    assert "exploding_gradients" in codes(found)


def test_divergence_is_reported_with_its_history(tmp_path):
    splits = synthetic_splits(n=120, seed=0)
    config = TrainConfig(**{**QUICK, "cell": "rnn", "epochs": 30, "lr": 1e6, "clip_norm": 1e9, "noise": 0.0})
    with pytest.raises(TrainingDiverged) as info:
        train(splits, config)
    assert isinstance(info.value, FloatingPointError)  # what the hyperparameter search relies on
    found = diagnose(info.value.history, splits, config, diverged=str(info.value))
    assert found[0].code == "exploding_gradients" and "diverged" in found[0].finding
    run_ = train_to_dir("synthetic", tmp_path, config, splits=splits, baseline=False)
    assert run_.result is None and "diverged" in run_.verdict
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["diverged"] and history["diagnostics"][0]["code"] == "exploding_gradients"
    assert not (tmp_path / "checkpoint.pt").exists()


def test_vanishing_gradients_across_layers_are_reported():
    # A 16-layer vanilla RNN: the gradient reaching its first layer is ~1e-4 of the head's (each
    # tanh layer roughly halves it; 6 layers only reach ~1e-2, which is not reported).
    splits = synthetic_splits(n=120, seed=0, min_len=60, max_len=60)
    _, found = run(splits, cell="rnn", num_layers=16, hidden_size=8, epochs=3, lr=1e-3)
    (d,) = [d for d in found if d.code == "vanishing_gradients"]
    assert "rnn.l0" in d.finding and "--num-layers" in d.remedy


def test_vanishing_gradient_through_time_is_measured_on_long_sequences():
    # A vanilla RNN over 400 steps: the loss gradient does not reach the first steps.
    splits = synthetic_splits(n=60, seed=0, min_len=400, max_len=400)
    result, found = run(splits, cell="rnn", epochs=2, lr=1e-3)
    probe = next(r["time_gradient"] for r in result.history if "time_gradient" in r)
    assert probe["length"] == 400 and probe["first_to_peak"] < 1e-3 and probe["reach"] < 400
    (d,) = [d for d in found if d.code == "vanishing_through_time"]
    assert "400-step" in d.finding and "--init chrono" in d.remedy


def test_chrono_lstm_keeps_the_gradient_over_the_same_sequences():
    splits = synthetic_splits(n=60, seed=0, min_len=400, max_len=400)
    _, found = run(splits, cell="lstm", init="chrono", epochs=2, lr=1e-3)
    assert "vanishing_through_time" not in codes(found)


def test_a_validation_split_too_small_to_select_on_is_reported():
    splits = synthetic_splits(n=40, seed=0)  # 6 validation series
    _, found = run(splits, epochs=2)
    (d,) = [d for d in found if d.code == "small_validation"]
    assert "6 series" in d.finding and "--folds" in d.remedy
    # k folds validate every training series: 34 series is enough.
    _, found = run(splits, epochs=2, folds=3, refit=True, min_refit_epochs=1)
    assert "small_validation" not in codes(found)
