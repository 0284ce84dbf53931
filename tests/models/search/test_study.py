"""Studies in a database: resuming an interrupted study continues it, workers share one study,
a study refuses to be mixed with a different search."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from rnnserve.models.search.sampling import make_pruner, make_sampler
from rnnserve.models.search.space import parse_space
from rnnserve.models.search.study import StudySpec, best_trial, finished, open_storage, open_study, run_trials
from rnnserve.models.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[3]
SPACE = parse_space({"params": {"cell": {"choices": ["gru", "rnn"]}, "lr": {"low": 1e-3, "high": 3e-2, "log": True}}})
SPACE_YAML = "params:\n  cell: {choices: [gru, rnn]}\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n"


def spec(space=SPACE, dataset="synthetic") -> StudySpec:
    return StudySpec(dataset, "classification", space, TrainConfig(epochs=2))


def cheap(trial: optuna.Trial) -> float:
    p = SPACE.suggest(trial)
    trial.set_user_attr("config", TrainConfig(**p).to_dict())
    from rnnserve.models.search.objective import worker_id

    trial.set_user_attr("worker", worker_id())
    return p["lr"]


def open_sqlite(tmp_path, **kw):
    return open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", kw.pop("spec", spec()),
                      make_sampler("tpe", SPACE, 0), make_pruner("median", 2))


def test_a_study_refuses_to_resume_with_a_different_search(tmp_path):
    first = open_sqlite(tmp_path)
    assert not first.existed
    assert open_sqlite(tmp_path).existed  # same options: resumes
    other = parse_space({"params": {"cell": {"choices": ["lstm"]}}})
    with pytest.raises(ValueError, match=r"study 's' in sqlite:///.* searches a different space"):
        open_sqlite(tmp_path, spec=spec(other))
    with pytest.raises(ValueError, match="different dataset"):
        open_sqlite(tmp_path, spec=spec(dataset="JapaneseVowels"))


def test_a_trial_left_running_by_a_killed_process_is_failed_and_trained_again(tmp_path):
    opened = open_sqlite(tmp_path)
    study = opened.study
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.suggest_categorical("cell", ["gru", "rnn"])
    orphan.suggest_float("lr", 1e-3, 3e-2, log=True)
    orphan_owner = f"{socket.gethostname()}:{dead.pid}"
    orphan.set_user_attr("worker", orphan_owner)
    ran = run_trials(study, opened.storage, cheap, target=3)
    assert ran == 3 and finished(study) == 3
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["stopped"] == f"its worker ({orphan_owner}) died"
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == first.number]
    assert len(retry) == 1 and retry[0].params == first.params and retry[0].state == TrialState.COMPLETE


def test_best_trial_finds_the_study_or_says_what_is_missing(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(FileNotFoundError, match="no study file"):
        best_trial(url)
    opened = open_sqlite(tmp_path)
    with pytest.raises(ValueError, match="has no completed trial yet"):
        best_trial(url)
    run_trials(opened.study, opened.storage, cheap, target=2)
    best = best_trial(url)
    assert best.study_name == "s" and best.dataset == "synthetic"
    assert best.value == min(t.value for t in opened.study.trials) and best.config["cell"] in ("gru", "rnn")
    with pytest.raises(ValueError, match="--study-name: no study 'x'"):
        best_trial(url, "x")


# --- the real command line, in separate processes ------------------------------------------------

def search_command(tmp_path: Path, storage: str, trials: int, study: str = "shared", epochs: int = 2) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    return [sys.executable, "-m", "rnnserve.cli", "search", "--dataset", "synthetic", "--name", "t",
            "--workdir", str(tmp_path / "work"), "--space", str(space), "--storage", storage,
            "--study-name", study, "--trials", str(trials), "--epochs", str(epochs), "--patience", str(epochs),
            "--hidden-size", "8", "--num-layers", "1", "--batch-size", "64"]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    return log.read_text()


@pytest.mark.slow
def test_resuming_an_interrupted_sqlite_study_continues_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Trials of 12 epochs (about a second each here) so that Ctrl-C, sent once two have finished, lands
    # while the search still runs: at 2 epochs all of them could finish before the poll saw two.
    cmd = search_command(tmp_path, url, trials=8, epochs=12)
    log = tmp_path / "first.log"
    proc = start(cmd, log)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:  # open_storage: this poll races the worker to create a new file's schema, as workers do
            study = optuna.load_study(study_name="shared", storage=open_storage(url))
        except KeyError:  # not created yet
            continue
        if finished(study) >= 2:
            break
    assert proc.poll() is None, log.read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    out = finish(proc, log)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted:" in out and "Traceback" not in out
    before = optuna.load_study(study_name="shared", storage=url).trials
    done_before = [t for t in before if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 2 <= len(done_before) < 8

    proc = start(cmd, tmp_path / "second.log")
    out = finish(proc, tmp_path / "second.log")
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming study 'shared' in {url}: {len(done_before)}/8 trials finished" in out
    after = optuna.load_study(study_name="shared", storage=url).trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after) == 8
    for old in done_before:  # kept as they were, not re-run
        new = after[old.number]
        assert (new.params, new.value, new.state) == (old.params, old.value, old.state)
    for failed in (t for t in before if t.state == TrialState.FAIL):  # the trial Ctrl-C stopped runs again
        assert failed.user_attrs["stopped"] == "interrupted"
        if not failed.params:
            continue  # stopped as it began, before it chose anything: nothing to train again
        retries = [t for t in after if t.user_attrs.get("retry_of") == failed.number]
        assert len(retries) == 1 and retries[0].params == failed.params
        assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert "rnnserve train --dataset synthetic --name t" in out


def _shared_study_by_two_workers(tmp_path: Path, url: str) -> None:
    cmd = search_command(tmp_path, url, trials=6)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [start(cmd, log) for log in logs]
    outs = [finish(p, log) for p, log in zip(procs, logs, strict=True)]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    trials = optuna.load_study(study_name="shared", storage=url).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 6 <= len(done) <= 7, [(t.number, t.state) for t in trials]  # one budget, not two (+1 if both raced)
    assert not [t for t in trials if t.state != TrialState.COMPLETE and t.state != TrialState.PRUNED]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    workers = {t.user_attrs["worker"] for t in done}
    assert workers == {f"{socket.gethostname()}:{p.pid}" for p in procs}  # both worked on it
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params)  # no configuration trained twice
    assert all("new study" in o or "resuming study" in o for o in outs)


def test_ctrl_c_while_the_report_is_written_exits_130_and_keeps_the_trials(tmp_path, monkeypatch, capsys):
    """The trials can all finish just before Ctrl-C: it then lands in the report (matplotlib's import is slow),
    which must end like an interrupted search, not with a traceback."""
    from rnnserve.cli import main
    from rnnserve.models.search import report

    def interrupted(*_):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "write_plots", interrupted)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    argv = search_command(tmp_path, url, trials=2)[3:]  # without "python -m rnnserve.cli": in this process
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted while writing the report: 2/2 trials finished and saved" in err
    assert finished(optuna.load_study(study_name="shared", storage=url)) == 2


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path):
    _shared_study_by_two_workers(tmp_path, f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_share_one_postgresql_study(tmp_path, postgres):
    _shared_study_by_two_workers(tmp_path, postgres.create_database("shared_two_workers"))


def test_a_seeded_search_with_pruning_is_reproducible(tmp_path):
    from rnnserve.models.data import synthetic_splits
    from rnnserve.models.search.objective import Objective

    splits = synthetic_splits(n=90, seed=0)
    base = TrainConfig(hidden_size=8, num_layers=1, epochs=3, patience=3, batch_size=32)
    runs = []
    for name in ("a", "b"):
        obj = Objective(splits, base, SPACE)
        pruner = make_pruner("median", obj.max_steps, warmup_steps=1, startup_trials=1)
        study_spec = StudySpec("synthetic", "classification", SPACE, base)
        opened = open_study(f"sqlite:///{tmp_path / name}.db", "s", study_spec, make_sampler("tpe", SPACE, 0), pruner)
        run_trials(opened.study, opened.storage, obj, target=4)
        runs.append([(t.params, t.state, t.value, t.intermediate_values) for t in opened.study.trials])
    assert runs[0] == runs[1]


def _open_after(barrier, url: str, results) -> None:
    from rnnserve.models.search.study import open_storage

    barrier.wait()
    try:
        open_storage(url)
        results.put("ok")
    except Exception as exc:  # reported to the test, not lost in the child
        results.put(f"{type(exc).__name__}: {exc}")


def _race_to_open(urls: list[str]) -> list[str]:
    """Six processes per URL open a new study's storage at the same instant (behind a barrier)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    outcomes = []
    for url in urls:
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_after, args=(barrier, url, results)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes += [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
    return outcomes


def test_workers_opening_a_new_sqlite_study_at_once_all_get_it(tmp_path):
    """Workers started together on a new SQLite file race to create its schema (SQLite says "table
    studies already exists" to the loser): every one of them must still open the study."""
    outcomes = _race_to_open([f"sqlite:///{tmp_path / f'race{round_}.db'}" for round_ in range(3)])
    assert outcomes == ["ok"] * 18, [o for o in outcomes if o != "ok"]


@pytest.mark.e2e
def test_workers_opening_a_new_postgresql_study_at_once_all_get_it(postgres):
    """The same race on PostgreSQL, where the loser hears 'relation "studies" already exists'
    (DuplicateTable) or a unique violation, depending on the instant."""
    outcomes = _race_to_open([postgres.create_database(f"race{round_}") for round_ in range(3)])
    assert outcomes == ["ok"] * 18, [o for o in outcomes if o != "ok"]


def test_a_trial_stopped_after_choosing_its_parameters_is_queued_again(tmp_path):
    """Ctrl-C can land after a trial chose its parameters and before it wrote anything else (here: at
    once); the stopped trial's parameters are queued by its number, so the next run trains it first."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")

    def objective(trial):
        trial.suggest_float("x", 0.0, 1.0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, study._storage, objective, target=3)
    failed, waiting = study.get_trials(states=(TrialState.FAIL,)), study.get_trials(states=(TrialState.WAITING,))
    assert len(failed) == 1 and failed[0].user_attrs["stopped"] == "interrupted"
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == failed[0].number
    assert waiting[0].system_attrs["fixed_params"] == failed[0].params  # a queued trial's parameters
