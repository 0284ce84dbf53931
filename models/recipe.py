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
# Target replication (the per-step loss) only pays on longer series.
REPLICATION_MIN_LENGTH = 50
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
    lengths = np.concatenate([splits.train.lengths, splits.val.lengths])
    mean_len = float(lengths.mean())
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
    choose("init", "chrono", f"gate biases spread over time scales up to the longest series ({int(lengths.max())} "
           "steps), so early steps still reach the last state")
    median_len = float(np.median(lengths))
    if median_len > REPLICATION_MIN_LENGTH:
        choose("target_replication", 0.5, f"series of ~{median_len:.0f} steps: the head's loss at every step gives "
               "every step a direct gradient")
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
