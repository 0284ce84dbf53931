"""Training benchmark: the default recipe (``models/recipe.py``) against its baselines on every
dataset ``rnnserve datasets`` lists, official train/test splits, several seeds: test accuracy
against 1-NN DTW on the classification sets; test RMSE against 1-NN DTW regression and the
training-mean predictor on the regression sets, which are read through the file path (written with
``rnnserve datasets --export`` into ``--files-dir``, read back as ``rnnserve train --data`` reads them).

    python -m rnnserve.bench.training                       # every dataset, seeds 0,1,2, 2 workers
    python -m rnnserve.bench.training --quick               # the CI version (2 small datasets, 1 seed)
    python -m rnnserve.bench.training --datasets Covid3Month,CardanoSentiment --format ts
    python -m rnnserve.bench.training --doc docs/BENCHMARKS.md --plot docs/img/training.png

Each RNN run is exactly what ``rnnserve train --dataset NAME --seed S`` (regression: ``--data
NAME_TRAIN.csv --test-data NAME_TEST.csv --seed S``) does (recipe, selection on validation only,
refit on train+val, one test evaluation), without writing a checkpoint. The baselines run once per
dataset (they are deterministic) on the same official split. Jobs run in ``--workers`` processes,
one torch thread each, longest first."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from rnnserve.bench.training_report import (
    markdown,
    markdown_regression,
    plot,
    plot_regression,
    summarise,
    summarise_regression,
    write_doc,
)

QUICK_DATASETS = ("UnitTest", "ItalyPowerDemand")


def _splits(name: str, seed: int, files: dict):
    """A classification set by name; a regression set from its files (``files[name]``: train, test)."""
    from rnnserve.models.data import load_aeon
    from rnnserve.models.files.source import DataFiles, load_files

    if name in files:
        return load_files(DataFiles(*files[name]), seed).splits
    return load_aeon(name, seed=seed)


def _cost(name: str, files: dict) -> float:
    """Relative cost (series x length) to schedule the longest jobs first."""
    s = _splits(name, 0, files)
    return float(sum(len(x) for x in s.train.sequences + s.val.sequences))


def run_baseline(name: str, files: dict) -> dict:
    from rnnserve.models.baseline import baselines
    from rnnserve.models.train import merge

    splits = _splits(name, 0, files)
    started = time.process_time()
    found = baselines(merge(splits.train, splits.val), splits.test)
    return {"kind": "baseline", "dataset": name, "baselines": [b.to_dict() for b in found],
            "cpu_seconds": time.process_time() - started}


def run_recipe(name: str, seed: int, overrides: dict, files: dict) -> dict:
    from rnnserve.models.diagnostics import diagnose
    from rnnserve.models.recipe import default_recipe
    from rnnserve.models.train import TrainingDiverged, train

    splits = _splits(name, seed, files)
    recipe = default_recipe(splits, {"seed": seed, **overrides})
    started, cpu = time.perf_counter(), time.process_time()
    diverged = None
    try:
        result = train(splits, recipe.config)
        history, metrics = result.history, result.metrics
    except TrainingDiverged as exc:
        history, metrics, diverged = exc.history, {"test_accuracy": float("nan"), "test_rmse": float("nan")}, str(exc)
    found = diagnose(history, splits, recipe.config, diverged)
    lengths = [len(s) for s in splits.train.sequences + splits.val.sequences]
    return {
        "kind": "rnn", "dataset": name, "seed": seed, "task": splits.train.task,
        **{k: metrics.get(k) for k in ("test_accuracy", "val_accuracy", "test_rmse", "val_rmse")},
        "best_epoch": metrics.get("best_epoch"), "refit_epochs": metrics.get("refit_epochs"),
        "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
        "config": recipe.config.to_dict(), "diagnoses": [d.to_dict() for d in found],
        "n_train": len(lengths), "n_test": len(splits.test), "features": splits.train.num_features,
        "classes": splits.train.output_size, "length": [min(lengths), max(lengths)],
    }


def _override(text: str) -> tuple[str, object]:
    key, _, raw = text.partition("=")
    if not raw:
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _line(row: dict) -> str:
    if row["kind"] == "baseline":
        return "\n".join(f"{row['dataset']:24s} {b['name']:13s} {b['value']:.4f} ({b['seconds']:.0f}s)"
                         for b in row["baselines"])
    codes = ",".join(d["code"] for d in row["diagnoses"]) or "-"
    metric = "test_accuracy" if row["task"] == "classification" else "test_rmse"
    return (f"{row['dataset']:24s} seed {row['seed']}    {row[metric]:.4f} ({row['seconds']:.0f}s, "
            f"{row['config']['epochs']} epochs, best {row['best_epoch']}) {codes}")


def run_jobs(names: list[str], seeds: list[int], args, overrides: dict, files: dict) -> list[dict]:
    """Baselines and recipe runs in ``args.workers`` spawned processes, longest first."""
    costs = {n: _cost(n, files) for n in names}
    jobs = [(costs[n] * (1 + len(seeds)), "baseline", n, None) for n in names if args.baseline]
    jobs += [(costs[n] * 2, "rnn", n, s) for n in names for s in seeds]
    jobs.sort(key=lambda j: -j[0])
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = [pool.submit(run_baseline, name, files) if kind == "baseline" else
                   pool.submit(run_recipe, name, seed, overrides, files) for _, kind, name, seed in jobs]
        for fut in as_completed(futures):
            rows.append(fut.result())
            print(_line(rows[-1]), flush=True)
    return rows


def regression_files(names: list[str], files_dir: Path, fmt: str) -> dict:
    """The regression sets among ``names`` written as ``fmt`` files (``rnnserve datasets --export``):
    name -> (train file, test file)."""
    from rnnserve.models.data import aeon_datasets
    from rnnserve.models.files.export import export_dataset

    files = {}
    for name in sorted(set(names) & set(aeon_datasets("regression"))):
        export_dataset(name, files_dir, suffixes=(f".{fmt}",))
        files[name] = (str(files_dir / f"{name}_TRAIN.{fmt}"), str(files_dir / f"{name}_TEST.{fmt}"))
    return files


def report(rows: list[dict], meta: dict, args) -> None:
    """JSON of every run, the tables (stdout, beside --out, into --doc) and the figures."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary, regression = summarise(rows), summarise_regression(rows)
    out.write_text(json.dumps({"meta": meta, "summary": summary, "regression": regression, "runs": rows}, indent=1))
    tables = []
    if summary:
        tables.append(markdown(summary, meta))
        print(f"wrote {plot(summary, Path(args.plot) if args.plot else out.with_suffix('.png'))}")
        if args.doc:
            write_doc(Path(args.doc), tables[-1])
    if regression:
        tables.append(markdown_regression(regression, meta))
        figure = Path(args.plot_regression) if args.plot_regression else out.with_name(out.stem + "-regression.png")
        print(f"wrote {plot_regression(regression, figure)}")
        if args.doc:
            write_doc(Path(args.doc), tables[-1], regression=True)
    out.with_suffix(".md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    print(f"wall {meta['wall_seconds']:.0f}s; wrote {out}, {out.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", help="comma-separated (default: every dataset aeon ships, classification and "
                   "regression)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help=f"CI version: {', '.join(QUICK_DATASETS)}, seed 0")
    p.add_argument("--no-baseline", dest="baseline", action="store_false")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="override a recipe choice (for studies; the default recipe has none)")
    p.add_argument("--format", choices=["csv", "ts", "npz"], default="csv",
                   help="the file format the regression sets are read from (default: csv)")
    p.add_argument("--files-dir", dest="files_dir", default="results/training/files",
                   help="where the regression sets' files are written")
    p.add_argument("--out", default="results/training/training.json")
    p.add_argument("--doc", help="write the tables into this Markdown file between their training markers")
    p.add_argument("--plot", help="write the classification figure here (default: beside --out)")
    p.add_argument("--plot-regression", dest="plot_regression", help="write the regression figure here "
                   "(default: beside --out)")
    args = p.parse_args(argv)

    from rnnserve.models.data import aeon_datasets

    shipped = aeon_datasets() + aeon_datasets("regression")
    if args.quick:
        names, seeds = list(QUICK_DATASETS), [0]
    else:
        names = args.datasets.split(",") if args.datasets else shipped
        seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(names) - set(shipped))
    if unknown:
        print(f"error: not shipped with aeon: {unknown}", file=sys.stderr)
        return 2
    overrides = dict(args.overrides)
    started = time.perf_counter()
    rows = run_jobs(names, seeds, args, overrides, regression_files(names, Path(args.files_dir), args.format))
    command = "python -m rnnserve.bench.training" + (" --quick" if args.quick else "") + (
        f" --datasets {args.datasets}" if args.datasets and not args.quick else "") + (
        f" --seeds {args.seeds}" if not args.quick else "") + f" --workers {args.workers}" + (
        f" --format {args.format}" if args.format != "csv" else "") + "".join(
        f" --set {k}={json.dumps(v)}" for k, v in overrides.items())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    meta = {"command": command, "workers": args.workers, "wall_seconds": time.perf_counter() - started,
            "seeds": seeds, "host": f"{usable} usable of {os.cpu_count()} CPUs, {platform.machine()}",
            "overrides": overrides, "format": args.format}
    report(rows, meta, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
