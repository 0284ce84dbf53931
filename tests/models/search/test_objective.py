"""The trial objective: pruning stops training at once, diagnostics and divergence are recorded."""

from __future__ import annotations

import optuna
import pytest

from rnnserve.models.data import synthetic_splits
from rnnserve.models.search.objective import Objective
from rnnserve.models.search.report import ranked_rows, trial_state
from rnnserve.models.search.sampling import make_pruner
from rnnserve.models.search.space import parse_space
from rnnserve.models.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCHS = 8


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n=90, seed=0)


def study_with(pruner, *params: dict) -> optuna.Study:
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    for p in params:
        study.enqueue_trial(p)
    return study


def objective(splits, space: dict, folds: int = 1, **base) -> Objective:
    config = TrainConfig(**{"hidden_size": 8, "num_layers": 1, "epochs": EPOCHS, "patience": EPOCHS,
                            "batch_size": 32, **base})
    return Objective(splits, config, parse_space({"params": space}), folds=folds)


def test_pruning_stops_a_hopeless_trial_early(splits):
    # lr 0.1: with the per-step cosine schedule (issue 20) 0.03 no longer gets below the initial
    # validation loss within 8 epochs on these 63 series, so it would not beat the hopeless trial.
    obj = objective(splits, {"lr": {"choices": [0.1, 1e-6]}})
    study = study_with(make_pruner("median", obj.max_steps, warmup_steps=1, startup_trials=1),
                       {"lr": 0.1}, {"lr": 1e-6})
    study.optimize(obj, n_trials=2)
    good, hopeless = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert good.user_attrs["stopped"] == "completed" and good.user_attrs["epochs_run"] == EPOCHS
    assert hopeless.state == optuna.trial.TrialState.PRUNED
    stopped_at = max(hopeless.intermediate_values)
    assert stopped_at < EPOCHS
    # training stopped at that epoch: no epoch ran after the one whose report pruned the trial
    assert hopeless.user_attrs["epochs_run"] == stopped_at == len(hopeless.intermediate_values)
    assert hopeless.user_attrs["stopped"].startswith(f"pruned at epoch {stopped_at} ")
    # the reported values are the best validation loss so far, the completed trial ends on its value
    values = [good.intermediate_values[s] for s in sorted(good.intermediate_values)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(good.value, rel=1e-5)
    assert good.user_attrs["config"]["lr"] == 0.1 and good.user_attrs["config"]["refit"] is False
    rows = ranked_rows(study)
    assert [r["state"] for r in rows] == ["complete", "pruned"]


def test_without_a_pruner_every_trial_runs_to_the_end(splits):
    obj = objective(splits, {"lr": {"choices": [0.03, 1e-6]}}, epochs=3, patience=3)
    study = study_with(make_pruner("none", obj.max_steps), {"lr": 0.03}, {"lr": 1e-6})
    study.optimize(obj, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.user_attrs["epochs_run"] for t in study.trials] == [3, 3]


def test_a_trial_records_its_exploding_gradients(splits):
    obj = objective(splits, {"cell": {"choices": ["rnn"]}}, epochs=2, patience=2, lr=0.5, clip_norm=1e-3)
    study = study_with(make_pruner("none", obj.max_steps))
    study.optimize(obj, n_trials=1)
    (trial,) = study.trials
    assert trial.user_attrs["gradient_flags"][0] == "exploding gradients at epochs 1-2"
    assert "exploding gradients" in ranked_rows(study)[0]["flags"]


def test_a_diverging_trial_is_stopped_and_says_why(splits):
    obj = objective(splits, {"cell": {"choices": ["rnn"]}}, epochs=6, patience=6, lr=1e8, weight_decay=1.0)
    study = study_with(make_pruner("none", obj.max_steps))
    study.optimize(obj, n_trials=1)  # no exception escapes: divergence is a result, not a crash
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and trial_state(trial) == "diverged"
    # "... at select epoch 3": the message names the training phase (issue 20)
    assert trial.user_attrs["stopped"].startswith("diverged: loss became nan at select epoch")


def test_cross_validation_averages_the_folds_and_reports_each_fold_on_its_own_steps(splits):
    obj = objective(splits, {"lr": {"choices": [0.03]}}, folds=2, epochs=2, patience=2)
    study = study_with(make_pruner("none", obj.max_steps))
    study.optimize(obj, n_trials=1)
    (trial,) = study.trials
    folds = trial.user_attrs["fold_val_loss"]
    assert len(folds) == 2 and trial.value == pytest.approx(sum(folds) / 2)
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # fold 2 reports on steps 3-4
    assert trial.user_attrs["epochs_run"] == 4
