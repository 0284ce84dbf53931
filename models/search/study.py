"""Studies in a database: an SQLite file by default (interrupt and resume), PostgreSQL for several
processes or machines on one study. Every worker runs trials until the study holds ``target``
finished (completed or pruned) trials, counting the ones other workers are running, so N workers
share one budget instead of running N of them (they may overshoot by at most N - 1 trials when they
start their last trials at the same moment).

A study remembers what it searches (dataset, space, base config, folds); joining or resuming it with
different ones is refused instead of mixing two searches in one table."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from ..train import TrainConfig
from .space import SearchSpace

STUDY_FILE = "study.db"
HEARTBEAT_S = 30  # a running trial writes a heartbeat this often ...
GRACE_S = 120  # ... and one silent for this long belongs to a dead worker: failed, then retried once
IDENTITY_ATTR = "rnnserve"
SCHEMA_ATTEMPTS = 5


@dataclass(frozen=True)
class StudySpec:
    """What a study searches; workers and resumes must agree on all of it."""

    dataset: str | dict  # a dataset name, or the data files with their options (DataFiles.to_dict())
    task: str
    space: SearchSpace
    base: TrainConfig
    folds: int = 1

    def identity(self) -> dict:
        doc = {"dataset": self.dataset, "task": self.task, "space": self.space.to_dict(),
               "base_config": self.base.to_dict(), "folds": self.folds}
        return json.loads(json.dumps(doc))  # the form it has once stored


def storage_url(storage: str | None, default_file: Path) -> str:
    """``None`` -> the default SQLite file; a plain path -> an SQLite file; a URL is kept."""
    if storage is None:
        return f"sqlite:///{Path(default_file).resolve()}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).resolve()}"
    return storage


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL has no password we could hide reliably
        return url.split("@")[-1]


def open_storage(url: str, *, must_exist: bool = False) -> optuna.storages.RDBStorage:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"storage: not a database URL: {safe_url(url)!r}; use sqlite:///FILE or "
                         "postgresql://USER@HOST:PORT/DATABASE") from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict = {}
    if backend == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("storage: an SQLite study needs a file (sqlite:///path/study.db)")
        if must_exist and not path.is_file():
            raise FileNotFoundError(f"no study file at {path}: run `rnnserve search` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # workers sharing one file wait for its lock
    elif backend == "postgresql":
        engine_kwargs = {"pool_pre_ping": True}
    else:
        raise ValueError(f"storage: {backend!r} is not supported; use sqlite:///FILE or "
                         "postgresql://USER@HOST:PORT/DATABASE")
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            # Workers started together on a new database race to create its schema; the loser hears
            # a unique violation (IntegrityError) or, PostgreSQL's DuplicateTable (ProgrammingError) /
            # SQLite's OperationalError, "... already exists", and finds the schema on the next try.
            if not isinstance(exc, IntegrityError) and "already exists" not in str(exc):
                raise RuntimeError(f"cannot open study storage {safe_url(url)}: {_first_line(exc)}") from None
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise RuntimeError(f"cannot open study storage {safe_url(url)}: its schema kept changing") from None
            time.sleep(0.2 * (attempt + 1))
        except (SQLAlchemyError, ImportError) as exc:
            raise RuntimeError(f"cannot open study storage {safe_url(url)}: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class OpenStudy:
    study: optuna.Study
    storage: optuna.storages.RDBStorage
    existed: bool  # joined or resumed rather than created


def open_study(url: str, name: str, spec: StudySpec, sampler, pruner) -> OpenStudy:
    """Create the study, or join / resume it."""
    storage = open_storage(url)
    existed = name in optuna.get_all_study_names(storage)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction="minimize", load_if_exists=True)
    wanted = spec.identity()
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is None:
        study.set_user_attr(IDENTITY_ATTR, wanted)
    elif recorded != wanted:
        differs = [k for k in wanted if recorded.get(k) != wanted[k]]
        raise ValueError(
            f"study {name!r} in {safe_url(url)} searches a different {', '.join(differs)}: resume it with the "
            "options it was started with, or pass --study-name to start a new study"
        )
    return OpenStudy(study, storage, existed)


def count(study: optuna.Study, *states: TrialState) -> int:
    return sum(t.state in states for t in study.get_trials(deepcopy=False))


def finished(study: optuna.Study) -> int:
    return count(study, TrialState.COMPLETE, TrialState.PRUNED)


def run_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    objective: Callable[[optuna.Trial], float],
    target: int,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> int:
    """Run trials until the study holds ``target`` finished ones (any worker's); returns how many
    this process ran. ``storage`` is the study's own (from :func:`open_study`). Ctrl-C stops after
    marking the running trial failed and queueing its parameters, so the next run (or another
    worker) trains it again first."""
    callbacks = [on_trial] if on_trial is not None else []
    ran = 0
    with _Interrupts() as interrupts:

        def guarded(trial: optuna.Trial) -> float:
            # Ctrl-C stops a trial only while its objective runs; one landing while Optuna creates
            # the trial or stores its result waits for the next check, so a finished trial is kept
            # and an interrupted one always says so.
            if interrupts.hit:  # came while Optuna created this trial: it stops before choosing anything
                trial.set_user_attr("stopped", "interrupted")
                raise KeyboardInterrupt
            interrupts.immediate = True
            try:
                value = objective(trial)
                interrupts.immediate = False  # inside the try: a Ctrl-C up to here is this trial's
                return value
            except KeyboardInterrupt:
                interrupts.stopped_trial = trial.number
                if "stopped" not in trial.user_attrs:
                    trial.set_user_attr("stopped", "interrupted")
                raise
            finally:
                interrupts.immediate = False

        try:
            while True:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)  # trials of dead workers: failed, then retried
                _fail_dead_local_trials(study, storage)
                interrupts.check()
                if finished(study) + count(study, TrialState.RUNNING) >= target:
                    return ran
                study.optimize(guarded, n_trials=1, callbacks=callbacks)
                ran += 1
                interrupts.check()
        except KeyboardInterrupt:
            if interrupts.stopped_trial is not None:
                _requeue_interrupted(study, interrupts.stopped_trial)
            raise


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also remembered: Python drops an exception
    raised inside a finalizer or weak-reference callback (SQLAlchemy has those), so a Ctrl-C landing
    there would otherwise be lost and the search would carry on."""

    def __init__(self) -> None:
        self.hit = False
        self.immediate = False  # raise at once (inside a trial's objective), else at the next check()
        self.stopped_trial: int | None = None  # the trial Ctrl-C stopped inside its objective
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.hit = True
        if self.immediate:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _fail_dead_local_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """A trial left running by a killed process on this host is failed and queued again at once,
    instead of after the heartbeat's grace period (which is for workers on other machines)."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("worker", ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "stopped", f"its worker ({owner}) died")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue_interrupted(study: optuna.Study, number: int) -> None:
    """Queue the parameters of trial ``number`` (the one Ctrl-C stopped) again, if it had chosen any.
    By number, not by the worker attribute: a Ctrl-C can land after the trial chose its parameters
    and before it recorded its worker (1 clean-clone run in ~10 left such a trial unqueued)."""
    stopped = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number == number),
                   None)
    if stopped is not None and stopped.params:
        study.enqueue_trial(stopped.params, user_attrs={"retry_of": stopped.number})


@dataclass(frozen=True)
class BestTrial:
    study_name: str
    number: int
    value: float
    config: dict
    dataset: str | dict  # as StudySpec records it
    user_attrs: dict


def best_trial(url: str, name: str | None = None) -> BestTrial:
    """The best completed trial of a stored study (``name`` may be omitted when it holds one study)."""
    storage = open_storage(url, must_exist=url.startswith("sqlite:"))
    names = optuna.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise ValueError(f"--study-name: {safe_url(url)} holds {len(names)} studies ({listed}); name one")
        name = names[0]
    elif name not in names:
        raise ValueError(f"--study-name: no study {name!r} in {safe_url(url)} (it holds: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise ValueError(f"study {name!r} has no completed trial yet")
    best = min(complete, key=lambda t: t.value)
    identity = study.user_attrs.get(IDENTITY_ATTR)
    if identity is None or "config" not in best.user_attrs:
        raise ValueError(f"study {name!r} was not written by `rnnserve search` (no training config recorded)")
    return BestTrial(name, best.number, float(best.value), dict(best.user_attrs["config"]), identity["dataset"],
                     dict(best.user_attrs))
