"""Samplers and pruners by name, seeded so that a study is reproducible and shared studies do not
repeat themselves.

A TPE or random sampler seeded once per process would make two workers of one study propose the
same configurations (same seed, same random start-up trials). Instead every trial gets a fresh
sampler seeded from (study seed, trial number): trial numbers are unique across workers, so workers
differ, and a study run alone, or interrupted and resumed, proposes the same trials as an
uninterrupted run given the same history."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.samplers import BaseSampler

from .space import SearchSpace

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


class PerTrialSeedSampler(BaseSampler):
    """Delegates to ``factory(seed)`` with a seed derived from the study seed and the trial number."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner = factory(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._factory((self._seed * 1_000_003 + trial.number) % 2**32)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(name: str, space: SearchSpace, seed: int, *, startup_trials: int = 10) -> BaseSampler:
    if name == "tpe":
        return PerTrialSeedSampler(lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=startup_trials), seed)
    if name == "random":
        return PerTrialSeedSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "grid":
        # One grid sampler: the grid's order (seeded) must be the same for every trial and worker.
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ValueError(f"sampler: must be one of {', '.join(SAMPLERS)}, got {name!r}")


def make_pruner(
    name: str, max_steps: int, *, warmup_steps: int = 4, startup_trials: int = 5
) -> optuna.pruners.BasePruner:
    """Pruners see one step per epoch (per fold and epoch with cross-validation, ``max_steps`` in
    all); ``warmup_steps`` epochs pass before any trial can be stopped."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)
    if name == "hyperband":
        min_resource = max(1, min(warmup_steps, max_steps // 3))
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max(max_steps, min_resource + 1),
                                              reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner: must be one of {', '.join(PRUNERS)}, got {name!r}")
