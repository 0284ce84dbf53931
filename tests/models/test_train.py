import json

import pytest

from rnnserve.models.data import synthetic_splits
from rnnserve.models.diagnostics import plot_history
from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
from rnnserve.models.train import TrainConfig, train


def test_training_learns_and_records_diagnostics(tmp_path):
    splits = synthetic_splits(n=240, seed=0)
    result = train(splits, TrainConfig(hidden_size=32, num_layers=2, epochs=30, patience=30, refit=False))
    first, best = result.history[0], result.history[result.best_epoch - 1]
    assert best["val_loss"] < first["val_loss"]
    assert result.metrics["test_accuracy"] > 0.6  # 3 classes: chance is 0.33
    for row in result.history:
        assert set(row["layer_grad_norm"]) == {"rnn.l0", "rnn.l1", "head"}
        assert row["grad_norm_max"] >= row["grad_norm_mean"] > 0
        assert 0 <= row["clipped_fraction"] <= 1
    png = plot_history(result.history, tmp_path / "h.png")
    assert png.stat().st_size > 10_000


def test_exploding_gradients_are_flagged():
    splits = synthetic_splits(n=60, seed=1)
    cfg = TrainConfig(cell="rnn", hidden_size=16, epochs=2, patience=2, refit=False, lr=0.5, clip_norm=1e-3)
    result = train(splits, cfg)
    assert any(row["exploding"] for row in result.history)
    assert all(row["clipped_fraction"] == 1.0 for row in result.history)


def test_refit_trains_on_train_plus_val_for_at_least_the_floor():
    splits = synthetic_splits(n=120, seed=2)
    cfg = TrainConfig(hidden_size=8, num_layers=1, epochs=3, patience=3, min_refit_epochs=4)
    result = train(splits, cfg)
    refit = [r for r in result.history if r["phase"] == "refit"]
    assert len(refit) == result.metrics["refit_epochs"] == 4
    assert "val_loss" not in refit[0]


def test_regression_task_trains(tmp_path):
    result = train_to_dir("synthetic-regression", tmp_path, TrainConfig(hidden_size=8, epochs=3, refit=False))
    assert "test_rmse" in result.metrics and (tmp_path / CHECKPOINT).exists()
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["config"]["hidden_size"] == 8 and (tmp_path / "training.png").exists()


def test_regression_trains_in_standardised_units_and_reports_rmse_in_target_units():
    """Targets x1000 + 5 train the same model up to float rounding: the head is trained on
    standardised targets and folded back into target units; the RMSE is in target units."""
    from dataclasses import replace

    import numpy as np

    from rnnserve.models.data import Splits

    def scaled(data):
        return replace(data, targets=(data.targets * 1000 + 5).astype(np.float32))

    splits = synthetic_splits(n=160, seed=5, task="regression")
    config = TrainConfig(hidden_size=8, num_layers=1, epochs=4, patience=4, min_refit_epochs=4)
    plain = train(splits, config)
    big = train(Splits("x1000", scaled(splits.train), scaled(splits.val), scaled(splits.test)), config)
    assert big.metrics["test_rmse"] / 1000 == pytest.approx(plain.metrics["test_rmse"], rel=1e-3)
    assert set(dict(big.model.named_parameters())) == set(dict(plain.model.named_parameters()))
    assert "head.weight" in dict(big.model.named_parameters())  # a plain head: the served form


def test_a_framed_model_trains_and_its_fast_path_is_the_served_forward():
    import torch

    from rnnserve.bundle.batch import pad
    from rnnserve.models.train import forward

    splits = synthetic_splits(n=240, seed=3, max_len=90)
    cfg = TrainConfig(hidden_size=16, num_layers=1, epochs=60, patience=60, refit=False, frame=3,
                      target_replication=0.5, lr=1e-2)
    result = train(splits, cfg)
    assert result.model.spec.frame == 3 and result.model.rnn.input_size == 12
    assert result.metrics["test_accuracy"] > 0.6  # 3 classes: chance is 0.33
    x, lengths = pad(list(splits.test.sequences[:16]))
    with torch.no_grad():
        fast = forward(result.model, torch.from_numpy(x), torch.from_numpy(lengths))
        served = result.model(torch.from_numpy(x), torch.from_numpy(lengths))
    assert torch.allclose(fast, served, atol=1e-5)


def test_an_ensemble_refit_is_one_model_of_k_members():
    import torch

    from rnnserve.bundle.batch import pad

    splits = synthetic_splits(n=120, seed=4)
    cfg = TrainConfig(hidden_size=8, num_layers=1, epochs=3, patience=3, min_refit_epochs=3, ensemble=3)
    result = train(splits, cfg)
    assert result.model.spec.hidden_size == 24 and result.metrics["ensemble"] == 3
    refit = [r for r in result.history if r["phase"] == "refit"]
    assert [r["member"] for r in refit] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    x, lengths = pad(list(splits.test.sequences))
    with torch.no_grad():
        out = result.model(torch.from_numpy(x), torch.from_numpy(lengths)).argmax(1).numpy()
    assert result.metrics["test_accuracy"] == (out == splits.test.targets).mean()
