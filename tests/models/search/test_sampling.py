"""Samplers: a seeded study repeats itself; workers sharing one study do not repeat each other."""

from __future__ import annotations

import optuna
import pytest

from rnnserve.models.search.sampling import make_pruner, make_sampler
from rnnserve.models.search.space import default_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = default_space("classification")


def cheap(trial: optuna.Trial) -> float:
    """Any deterministic function of the parameters: these tests are about what gets proposed."""
    p = SPACE.suggest(trial)
    return abs(p["lr"] - 0.003) * 100 + p["num_layers"] + (p["cell"] != "gru") + p["dropout"]


def proposals(sampler_name: str, seed: int, n: int = 14) -> list[dict]:
    study = optuna.create_study(sampler=make_sampler(sampler_name, SPACE, seed))
    study.optimize(cheap, n_trials=n)  # beyond TPE's 10 random start-up trials
    return [t.params for t in study.trials]


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_a_seeded_study_proposes_the_same_trials_again(name):
    assert proposals(name, 7) == proposals(name, 7)
    assert proposals(name, 7) != proposals(name, 8)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_two_workers_with_the_same_seed_on_one_study_do_not_duplicate_trials(name):
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    workers = [optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(name, SPACE, 0))
               for _ in range(2)]
    for _ in range(6):
        for w in workers:
            w.optimize(cheap, n_trials=1)
    params = [tuple(sorted(t.params.items())) for t in workers[0].trials]
    assert len(params) == 12 and len(set(params)) == 12


def test_the_grid_sampler_visits_every_point_once():
    space = parse_space({"params": {"cell": {"choices": ["gru", "rnn"]}, "num_layers": {"low": 1, "high": 3}}})
    study = optuna.create_study(sampler=make_sampler("grid", space, 0))
    study.optimize(lambda t: float(space.suggest(t)["num_layers"]), n_trials=20)  # stops when the grid is done
    assert sorted((t.params["cell"], t.params["num_layers"]) for t in study.trials) == [
        ("gru", 1), ("gru", 2), ("gru", 3), ("rnn", 1), ("rnn", 2), ("rnn", 3)]


def test_unknown_sampler_or_pruner_names_the_option():
    with pytest.raises(ValueError, match="sampler: must be one of"):
        make_sampler("cmaes", SPACE, 0)
    with pytest.raises(ValueError, match="pruner: must be one of"):
        make_pruner("patient", 10)
    assert isinstance(make_pruner("hyperband", 2), optuna.pruners.HyperbandPruner)
