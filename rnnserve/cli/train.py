"""``rnnserve train``, ``search`` and ``datasets``: the offline side (imports torch lazily)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import DEFAULT_DATASET, data_files, say, train_options


def _epoch_line(row: dict) -> None:
    metric = next((k for k in ("val_accuracy", "train_accuracy", "val_rmse", "train_rmse") if k in row), None)
    extra = f" {metric}={row[metric]:.4f}" if metric else ""
    val = f" val_loss={row['val_loss']:.4f}" if "val_loss" in row else ""
    flags = (" VANISHING:" + ",".join(row["vanishing_layers"])) if row["vanishing_layers"] else ""
    flags += " EXPLODING" if row["exploding"] else ""
    fold = f" fold {row['fold']}" if "fold" in row else ""
    fold += f" member {row['member']}" if "member" in row else ""
    reach = ""
    if "time_gradient" in row:
        tg = row["time_gradient"]
        reach = f" grad_reach={tg['reach']}/{tg['length']}steps"
    say(
        f"{row['phase']:6s} epoch {row['epoch']:3d}{fold} train_loss={row['train_loss']:.4f}{val}{extra} "
        f"grad_norm={row['grad_norm_mean']:.3g} clipped={row['clipped_fraction']:.0%}{reach}{flags} "
        f"({row['seconds']:.1f}s)"
    )


def train_config(args):
    from rnnserve.models.train import TrainConfig

    return TrainConfig(**_explicit_training_options(args))


def cmd_train(args) -> int:
    from rnnserve.models.files.source import load_source
    from rnnserve.models.pipeline import train_to_dir

    out = Path(args.workdir) / args.name
    files, dataset = data_files(args), args.dataset or DEFAULT_DATASET
    if getattr(args, "from_study", None):  # `prepare` shares this command and has no --from-study
        # The study's best trial is trained as it was searched: a full config, no recipe.
        config, source = _config_from_study(args)
        dataset, files = (source, None) if isinstance(source, str) else (None, source)
        overrides, seed = None, config.seed
    else:
        config, overrides = None, _explicit_training_options(args)
        seed = overrides.get("seed", 0)
    loaded = load_source(dataset, files, seed)  # a bad file fails here, before anything is written
    for note in loaded.notes:
        say(note)
    name = loaded.splits.name
    if config is not None:
        say(f"training {config.cell} on {name} -> {out}")
    else:
        say(f"training on {name} -> {out}" + (f" with {overrides}" if overrides else ""))
    started = time.perf_counter()
    run = train_to_dir(name, out, config, _epoch_line, overrides=overrides, baseline=getattr(args, "baseline", True),
                       splits=loaded.splits, data=loaded.record)
    if run.reasons:
        say("recipe (chosen from the data unless given):")
        for field, why in run.reasons.items():
            say(f"  {field}={getattr(run.config, field)}: {why}")
    if run.result is not None:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in run.metrics.items()}
        say(f"done in {time.perf_counter() - started:.0f}s: {shown}")
    for diagnosis in run.diagnoses:
        say(f"diagnosis: {diagnosis.line()}")
    say(f"checkpoint, history.json and training.png are in {out}" if run.result is not None
        else f"history.json and training.png are in {out}")
    say(run.verdict)
    return 0 if run.result is not None else 1


def _explicit_training_options(args) -> dict:
    from rnnserve.models.train import TrainConfig

    return {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if getattr(args, k, None) is not None}


def _config_from_study(args):
    """The best trial's full training config (with refit, as ``rnnserve train`` always does), plus
    any training option given explicitly on this command line."""
    from dataclasses import fields

    from rnnserve.models.files.source import DataFiles
    from rnnserve.models.search.study import best_trial, storage_url
    from rnnserve.models.train import TrainConfig

    best = best_trial(storage_url(args.from_study, Path(args.from_study)), args.study_name)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(best.config) - known)
    if unknown:
        raise ValueError(f"--from-study: trial {best.number} of {best.study_name!r} sets {unknown}, which this "
                         "version's training config does not have")
    overrides = _explicit_training_options(args)
    config = TrainConfig(**{**best.config, "refit": True, **overrides})
    source = best.dataset if isinstance(best.dataset, str) else DataFiles.from_dict(best.dataset)
    given = data_files(args) or args.dataset
    if given and _identity(given) != _identity(source):
        say(f"{'--data' if args.data else '--dataset'} ignored: the study searched {_source_name(source)}")
    say(f"study {best.study_name!r}: best trial {best.number} (val_loss {best.value:.4g}); training its config"
        + (f" with {overrides}" if overrides else ""))
    return config, source


def _source_name(source) -> str:
    return source if isinstance(source, str) else " ".join(source.argv())


def _identity(source):
    """What a study records of its data: the dataset name, or the files' ``to_dict()``."""
    return source if isinstance(source, str) else source.to_dict()


def reproduce_command(source, name: str, workdir: str, config: dict, searched=()) -> str:
    """The ``rnnserve train`` command line that trains ``config`` (every searched field, and every
    field that differs from the current defaults) on ``source``: a dataset name, or ``DataFiles``
    (``--data ...`` with their options)."""
    import shlex

    from rnnserve.models.train import TrainConfig

    default = TrainConfig().to_dict()
    data = ["--dataset", source] if isinstance(source, str) else source.argv()
    parts = ["rnnserve", "train", *data, "--name", name]
    if workdir != "artifacts":
        parts += ["--workdir", workdir]
    for field, value in config.items():
        if field == "refit" or (field not in searched and default.get(field) == value):
            continue
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{field.replace('_', '-')}")
        else:
            parts += [flag, repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def _trial_line(study, trial) -> str:
    from rnnserve.models.search.report import trial_row

    row = trial_row(trial)
    metric = next((k for k in ("val_accuracy", "val_rmse") if k in row), None)
    parts = [f"trial {row['trial']} {row['state']}"]
    if "val_loss" in row:
        parts.append(f"val_loss={row['val_loss']:.4f}")
    if metric:
        parts.append(f"{metric}={row[metric]:.4f}")
    if "epochs_run" in row:
        parts.append(f"epochs={row['epochs_run']}")
    if row["state"] != "complete" and row["stopped"]:
        parts.append(f"[{row['stopped']}]")
    if row["flags"]:
        parts.append(f"[{row['flags']}]")
    if "seconds" in row:
        parts.append(f"({row['seconds']:.1f}s)")
    parts.append(str(trial.params))
    if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        parts.append(f"| best so far: trial {study.best_trial.number} val_loss={study.best_value:.4f}")
    return "[rnnserve] " + " ".join(parts)


def cmd_search(args) -> int:
    import optuna

    from rnnserve.models.files.source import load_source
    from rnnserve.models.search.objective import Objective
    from rnnserve.models.search.report import Progress, ranked_rows, write_plots, write_table
    from rnnserve.models.search.sampling import make_pruner, make_sampler
    from rnnserve.models.search.space import default_space, default_space_text, load_space
    from rnnserve.models.search.study import STUDY_FILE, StudySpec, finished, open_study, run_trials, safe_url
    from rnnserve.models.search.study import storage_url as to_url
    from rnnserve.models.train import TrainConfig

    if args.show_space:
        print(default_space_text(args.show_space), end="")
        return 0
    # Optuna logs every failed trial with its traceback (Ctrl-C included); the table says how each ended.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    fixed = _explicit_training_options(args)
    seed = fixed.get("seed", TrainConfig().seed)
    space = load_space(args.space) if args.space else None  # a bad file fails before the data loads
    files, dataset = data_files(args), args.dataset or DEFAULT_DATASET
    loaded = load_source(None if files else dataset, files, seed)
    for note in loaded.notes:
        say(note)
    splits, task = loaded.splits, loaded.splits.train.task
    space = space or default_space(task)
    if set(fixed) & set(space.names):
        say("fixed on the command line, not searched: " + ", ".join(f"{k}={fixed[k]}" for k in space.names
                                                                      if k in fixed))
        space = space.without(fixed)
    base = TrainConfig(**{**space.fixed, **fixed})
    if args.cv == 1 or args.cv < 0:
        raise ValueError(f"--cv: give 0 (the validation split) or at least 2 folds, got {args.cv}")
    objective = Objective(splits, base, space, folds=args.cv)
    sampler = make_sampler(args.sampler, space, seed)
    if args.sampler == "grid":
        target = space.grid_size()
        say(f"grid: {target} configurations, every one trained" + (" (--trials does not apply)" if args.trials else ""))
    else:
        target = args.trials or 30
    pruner = make_pruner(args.pruner, objective.max_steps)
    out = Path(args.workdir) / args.name / "search"
    url = to_url(args.storage, out / STUDY_FILE)
    name = args.study_name or args.name
    # files by absolute path and every option: the study resumes from any directory, and refuses other files
    opened = open_study(url, name, StudySpec(_identity(files or dataset), task, space, base, args.cv), sampler, pruner)
    study = opened.study
    done = finished(study)
    folds = f", {args.cv}-fold cross-validation" if args.cv else ""
    say(f"{'resuming' if opened.existed else 'new'} study {name!r} in {safe_url(url)}: {done}/{target} trials "
        f"finished ({args.sampler} sampler, {args.pruner} pruner{folds}, {len(space.params)} hyperparameters)")
    progress = Progress(target, done)
    started = time.perf_counter()
    interrupted = False
    try:
        ran = run_trials(study, opened.storage, objective, target,
                         on_trial=lambda st, trial: progress.update(st, trial, _trial_line(st, trial)))
    except KeyboardInterrupt:
        interrupted, ran = True, None
    finally:
        progress.close()
    rows = ranked_rows(study)
    if not rows:
        say("no finished trials yet")
        return 130 if interrupted else 0
    try:
        _, md = write_table(rows, out)
        plots, skipped = write_plots(study, out)
    except KeyboardInterrupt:  # every finished trial is already in the study; only the report is cut short
        say(f"interrupted while writing the report: {finished(study)}/{target} trials finished and saved; "
            "run the same command to resume the study and write the report")
        return 130
    print(md.read_text())
    for plot, why in skipped.items():
        say(f"plot {plot} skipped: {why}")
    say(f"table and {len(plots)} plots in {out}" + (f"; this process ran {ran} trials in "
                                                    f"{time.perf_counter() - started:.0f}s" if ran is not None else ""))
    if interrupted:
        say(f"interrupted: {finished(study)}/{target} trials finished; run the same command to resume the study")
        return 130
    if any(r["state"] == "complete" for r in rows):
        best = study.best_trial
        command = reproduce_command(files or dataset, args.name, args.workdir, best.user_attrs["config"], space.names)
        say(f"best: trial {best.number}, val_loss {best.value:.4f}; train it (with refit on train+val) by")
        print(command)
        study_arg = args.storage if args.storage else str(out / STUDY_FILE)
        say(f"or: rnnserve train --from-study {study_arg} --study-name {name} --name {args.name}")
    return 0


def cmd_datasets(args) -> int:
    from rnnserve.models.data import aeon_datasets

    if args.export:
        from rnnserve.models.files.export import export_dataset

        name, out = args.export
        for path in export_dataset(name, Path(out)):
            print(path)
        say(f"train on them: rnnserve train --data {Path(out) / f'{name}_TRAIN.csv'} --test-data "
            f"{Path(out) / f'{name}_TEST.csv'} --name {name.lower()}")
        return 0
    rows = [(n, "classification") for n in aeon_datasets()] + [(n, "regression") for n in aeon_datasets("regression")]
    rows += [("synthetic", "classification (generated)"), ("synthetic-regression", "regression (generated)")]
    width = max(len(n) for n, _ in rows)
    print("\n".join(f"{n:{width}s}  {task}" for n, task in rows))
    return 0


def recipe_options(sp) -> None:
    """Options of the default recipe beyond the common training options (`train` and `prepare`)."""
    sp.add_argument("--init", choices=["chrono", "default"], help="gate-bias initialisation (recipe: chrono)")
    sp.add_argument("--target-replication", dest="target_replication", type=float,
                    help="weight of the per-step training loss, 0-1 (recipe: 0.5)")
    sp.add_argument("--frame", type=int, help="input steps read as one recurrent step (recipe: the median length / 64, "
                    "rounded, 1 to 16); streams of such a model send whole frames but the last chunk")
    sp.add_argument("--ensemble", type=int, help="refits from different seeds averaged into the final model, "
                    "served as one model of ensemble x hidden-size units (recipe: 5 for at most 50 training "
                    "series of at least 32 recurrent steps, else 1)")
    sp.add_argument("--warp", type=float, help="random time-stretch augmentation, +-fraction of the length")
    sp.add_argument("--scale", type=float, help="random amplitude-scaling augmentation, +-fraction")
    sp.add_argument("--folds", type=int, help="choose the epoch count on k folds of train+val (0: the val split)")
    sp.add_argument("--early-stopping", dest="early_stopping", action=argparse.BooleanOptionalAction, default=None,
                    help="stop on the validation split (--no-early-stopping: run the whole schedule)")
    sp.add_argument("--threads", type=int, help="torch threads while training (recipe: 1)")
    sp.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the 1-NN DTW baseline in the verdict (it can take minutes on long series)")


def register(sub) -> None:
    sp = sub.add_parser("train", help="train a model (default recipe from the data, diagnostics, verdict)",
                        description="Train with the default recipe (chosen from the data; every option given here "
                        "overrides it), print the diagnoses, and end with a verdict: test accuracy against "
                        "1-NN DTW on the same split.")
    train_options(sp)
    recipe_options(sp)
    sp.add_argument("--from-study", dest="from_study", metavar="STORAGE",
                    help="train the best trial of a `rnnserve search` study (a study file or database URL); "
                    "its config is used as searched, without the recipe")
    sp.add_argument("--study-name", dest="study_name", help="with --from-study: which study (default: the only one)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("search", help="hyperparameter search (Optuna: TPE, pruning, SQLite/PostgreSQL studies)",
                        description="Search training hyperparameters with Optuna. Training options given here are "
                        "fixed for every trial; the rest come from the search space (--space, or the default for "
                        "the dataset's task: see --show-space).")
    train_options(sp)
    sp.add_argument("--space", help="search space YAML file (default: the built-in space for the task)")
    sp.add_argument("--show-space", dest="show_space", choices=["classification", "regression"],
                    help="print a built-in search space (a starting point for --space) and exit")
    sp.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe",
                    help="tpe (default), random, or grid (every combination; needs finite values)")
    sp.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                    help="stop hopeless trials early on their validation loss (default: median)")
    sp.add_argument("--trials", type=int, help="finished trials the study should hold (default: 30; all workers "
                    "together; the grid sampler runs the whole grid)")
    sp.add_argument("--cv", type=int, default=0, help="stratified k-fold cross-validation over train+val with "
                    "this many folds (default 0: the validation split)")
    sp.add_argument("--storage", help="study database: a file path or sqlite:///FILE (default: "
                    "<workdir>/<name>/search/study.db), or postgresql://USER@HOST:PORT/DB for several workers")
    sp.add_argument("--study-name", dest="study_name", help="default: the --name")
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("datasets", help="list datasets usable offline, or write one as files (--export)",
                        description="List the datasets usable offline (shipped inside the aeon wheel) with their "
                        "task; --export writes one as the files `rnnserve train --data` reads.")
    sp.add_argument("--export", nargs=2, metavar=("NAME", "DIR"), help="write NAME's official train and test splits "
                    "to DIR as NAME_TRAIN/NAME_TEST .ts, .csv (long format) and .npz")
    sp.set_defaults(func=cmd_datasets)
