"""The default training recipe: a ``TrainConfig`` chosen from the training data (never from its
name), each choice with the reason it was made. Options the user gives explicitly always win.

Every rule here is justified by the training benchmark (``python -m rnnserve.bench.training``,
docs/BENCHMARKS.md), which runs this recipe on every dataset ``rnnserve datasets`` lists."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from .data import Splits
from .train import TrainConfig

# Optimiser steps the schedule aims at, and the training-cost ceiling (sequence-steps processed
# per fit: series x length x epochs) that bounds it on long series.
TARGET_STEPS = 1500
STEP_BUDGET = 15_000_000
MIN_EPOCHS, MAX_EPOCHS = 60, 400
# Long series are read several steps per recurrent step (ModelSpec.frame) so the LSTM runs about
# TARGET_RECURRENT_STEPS steps, with frames of at most MAX_FRAME steps. Measured with the training
# benchmark (docs/BENCHMARKS.md, "Training"): ACSF1 (1,460 steps) 30% test accuracy at frame 1,
# 75-78% at frame 8, 76% at 16, 52-60% at 23 (its 1,460 / 64); ArrowHead (251) 67% at frame 1,
# 64-71% at 2, 69-75% at 4, 57-69% at 8; BasicMotions (100) 92.5% at frame 1, 97.5% at 2 and 4.
TARGET_RECURRENT_STEPS = 64
MAX_FRAME = 16
# Target replication (the per-step loss) only pays on longer series (lengths in recurrent steps
# from here on: the training cost and how far a gradient travels depend on those).
REPLICATION_MIN_LENGTH = 50
# ... and on short series when there are this few training series: UnitTest (20 series of 24 steps)
# 93.9% -> 95.5% test accuracy, seeds 0-2; JapaneseVowels (270 series) lost 2 points with it.
REPLICATION_MAX_SERIES = 30
# Up to ENSEMBLE_MAX_SERIES training series of at least ENSEMBLE_MIN_LENGTH recurrent steps, one
# seed's model is a noisy draw, so the final model averages ENSEMBLE refits from different seeds
# (models/ensemble.py). Training benchmark, seeds 0/1/2: ArrowHead (36 series, 63 recurrent steps)
# 72.6 / 70.3 / 63.4% with one refit, 71.4 / 74.3 / 75.4% with 5; BasicMotions (40, 50) 97.5% -> 100%;
# PickupGestureWiimoteZ (50) 70.7% -> 72.0%. On short series the seeds already agreed and averaging
# did not help: UnitTest (20 series of 24 steps) 95.5% on every seed with one refit, 93.9% with 5 or 3.
ENSEMBLE_MAX_SERIES = 50
ENSEMBLE_MIN_LENGTH = 32
ENSEMBLE = 5
# Below this many validation series a holdout cannot rank epochs: one series moves accuracy by
# more than 3 points.
MIN_VALIDATION = 30
# k-fold selection for small sets, while its cost (k fits) stays below this many sequence-steps.
FOLD_BUDGET = 4_000_000
FOLDS = 5


@dataclass(frozen=True)
class Recipe:
    config: TrainConfig
    reasons: dict[str, str]  # field -> why it has its value

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "reasons": dict(self.reasons)}


def default_recipe(splits: Splits, overrides: dict | None = None) -> Recipe:
    """The recipe for ``splits`` with ``overrides`` (explicit user options) applied last."""
    overrides = dict(overrides or {})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown training options: {unknown}")
    n = len(splits.train) + len(splits.val)
    raw = np.concatenate([splits.train.lengths, splits.val.lengths])
    reasons: dict[str, str] = {}
    choice: dict = {}

    def choose(field: str, value, why: str):
        """Record a choice unless the user gave the field; return the value in force."""
        if field in overrides:
            choice[field], reasons[field] = overrides[field], "given explicitly"
        else:
            choice[field], reasons[field] = value, why
        return choice[field]

    choose("cell", "lstm", "the fused LSTM kernel is 10-15x faster to train on CPU than GRU in torch 2.13")
    choose("hidden_size", 64, "one 64-unit layer fits every benchmark set; wider overfits the small ones")
    choose("num_layers", 1, "a second layer doubled the cost without a gain on the benchmark")
    raw_median = float(np.median(raw))
    frame = min(MAX_FRAME, max(1, round(raw_median / TARGET_RECURRENT_STEPS)))
    if frame > 1:
        frame = choose("frame", frame, f"series of ~{raw_median:.0f} steps: {frame} steps per recurrent step, so "
                       f"the LSTM runs ~{raw_median / frame:.0f} steps (on long series it underfits and its "
                       "gradients explode)")
    else:
        frame = choose("frame", 1, f"series of ~{raw_median:.0f} steps: one step per recurrent step")
    lengths = -(-raw // frame)  # recurrent steps
    mean_len = float(lengths.mean())
    choose("init", "chrono", f"gate biases spread over time scales up to the longest series "
           f"({int(lengths.max())} recurrent steps), so early steps still reach the last state")
    median_len = float(np.median(lengths))
    regression = splits.train.task == "regression"
    if regression:
        choose("target_replication", 0.0, "regression: the per-step loss is for classification (a class can be "
               "read off a prefix; a regression target generally needs the whole series)")
    elif median_len > REPLICATION_MIN_LENGTH:
        choose("target_replication", 0.5, f"series of ~{median_len:.0f} steps: the head's loss at every step gives "
               "every step a direct gradient")
    elif n < REPLICATION_MAX_SERIES:
        choose("target_replication", 0.5, f"only {n} training series (< {REPLICATION_MAX_SERIES}): the loss at every "
               "step is more supervision per series")
    else:
        choose("target_replication", 0.0, f"series of ~{median_len:.0f} steps (<= {REPLICATION_MIN_LENGTH}): the "
               "gradient reaches every step without help, and the per-step loss cost accuracy")
    choose("lr", 1e-2, "with a cosine schedule and clipping at 1, 1e-2 converged faster than 3e-3")
    batch = choose("batch_size", int(min(32, max(8, 2 ** round(math.log2(max(n, 1) / 8))))),
                   f"about 8 batches per epoch over {n} series")
    steps_per_epoch = math.ceil(n / batch)
    by_steps = math.ceil(TARGET_STEPS / steps_per_epoch)
    by_cost = int(STEP_BUDGET / max(1.0, n * mean_len))
    epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, min(by_steps, by_cost))))
    why = f"~{TARGET_STEPS} optimiser steps at {steps_per_epoch} per epoch"
    if by_cost < by_steps:
        why = f"bounded by the training budget ({STEP_BUDGET:.0e} sequence-steps; {n} series of ~{mean_len:.0f} steps)"
    epochs = choose("epochs", epochs, why)
    choose("patience", max(20, epochs // 3), "a third of the schedule: the cosine tail often improves late")
    choose("min_refit_epochs", min(epochs, 30), "floor for the refit length")
    choose("noise", 0.2, "input noise in feature standard deviations")
    # On series longer than REPLICATION_MIN_LENGTH steps +-20% rather than +-10%, seeds 0-2:
    # BasicMotions 86.7% -> 92.5%, PickupGestureWiimoteZ 68.7% -> 72.0%, ArrowHead 66.5% -> 66.9%
    # test accuracy. On series of <= 50 steps +-20% cost accuracy (seeds 0-2: JapaneseVowels 96.7%
    # vs 97.4% at +-10%, UnitTest 92.4% vs 93.9%, ItalyPowerDemand 95.8% vs 96.1%).
    aug = 0.2 if median_len > REPLICATION_MIN_LENGTH else 0.1
    choose("warp", aug, f"random +-{aug:.0%} time stretch (series of ~{median_len:.0f} steps): the invariance "
           "1-NN DTW has by construction")
    choose("scale", aug, f"random +-{aug:.0%} amplitude scaling")
    if n <= ENSEMBLE_MAX_SERIES and median_len >= ENSEMBLE_MIN_LENGTH:
        choose("ensemble", ENSEMBLE, f"only {n} training series (<= {ENSEMBLE_MAX_SERIES}) of ~{median_len:.0f} "
               f"recurrent steps: one seed's model is a noisy draw; {ENSEMBLE} refits from different seeds are "
               f"averaged, served as one LSTM of {ENSEMBLE} x {choice['hidden_size']} units")
    elif n <= ENSEMBLE_MAX_SERIES:
        choose("ensemble", 1, f"{n} series of ~{median_len:.0f} recurrent steps (< {ENSEMBLE_MIN_LENGTH}): seeds agree "
               "on series this short, one refit")
    else:
        choose("ensemble", 1, f"{n} training series: one refit")
    n_val = len(splits.val)
    fold_cost = FOLDS * n * mean_len * epochs
    if n_val < MIN_VALIDATION and fold_cost <= FOLD_BUDGET:
        choose("folds", FOLDS, f"the validation split has {n_val} series (< {MIN_VALIDATION}): the epoch count "
               f"is chosen on {FOLDS} folds of all {n} training series instead")
    elif n_val < MIN_VALIDATION:
        choose("early_stopping", False, f"the validation split has {n_val} series (< {MIN_VALIDATION}), too few to "
               "select an epoch on, and k folds would cost too much: the full schedule runs")
    for field, value in overrides.items():
        choice.setdefault(field, value)
        reasons.setdefault(field, "given explicitly")
    return Recipe(replace(TrainConfig(), **choice), reasons)
