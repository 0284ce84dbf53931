"""Exhaustive grid vs TPE studies with pruning (median, Hyperband), side by side in one run, on
JapaneseVowels.

The grid is what `rnnserve search` used to do: every combination, each trained until early
stopping. ``--grid small`` crosses 5 hyperparameters at 2-3 levels (cell x hidden 64/128 x layers
1/2 x lr 1e-3/3e-3 x direction: 48 configurations); ``--grid wide`` crosses the 8 hyperparameters of
the default search space (adding dropout 0/0.2, batch 32/64, clip norm 0.5/1: 384 configurations).

Each TPE arm runs 30 trials with one pruner over one space (``--arms pruner[:space]``):
``grid-ranges`` is the small grid's space with its levels opened into ranges (hidden 64-128 step 16,
lr 1e-3-3e-3 log, the same cells, layers and directions); ``wide`` is the default classifier space
of `rnnserve search` (8 hyperparameters, wider ranges, larger models); or a space file. The median
pruner stops a trial whose best validation loss so far is worse than the median of completed trials
at the same epoch (from epoch 4, after 5 completed trials); Hyperband (successive halving, rungs
from epoch 4, reduction factor 3) keeps the best third of the trials at each rung.

All arms use the same training recipe, seed, epoch budget and selection rule (validation loss);
their trials are interleaved (the arm furthest behind its budget runs next), so load from other
processes on the machine falls on all of them alike. Each arm's wall and CPU time is the sum over
its own trials (one torch thread).

    nice -n 19 .venv/bin/python -m rnnserve.bench.search --grid small \
        --arms median,hyperband,median:wide,hyperband:wide --out results/search-small
    nice -n 19 .venv/bin/python -m rnnserve.bench.search --grid wide \
        --arms median:wide,hyperband:wide --out results/search-wide --plots-to docs/img

Then the best trial of a TPE arm, retrained (with refit) and exported through the parity gate:

    .venv/bin/rnnserve train --from-study results/search-wide/tpe-median-wide.db --name vowels-searched
    .venv/bin/rnnserve export --name vowels-searched
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from rnnserve.models.data import load_dataset
from rnnserve.models.search.objective import Objective
from rnnserve.models.search.report import ranked_rows, write_plots, write_table
from rnnserve.models.search.sampling import make_pruner, make_sampler
from rnnserve.models.search.space import SearchSpace, default_space, load_space, parse_space
from rnnserve.models.search.study import StudySpec, finished, open_study, run_trials
from rnnserve.models.train import TrainConfig, train

GRID = {  # --grid small
    "cell": ["lstm", "gru", "rnn"],
    "hidden_size": [64, 128],
    "num_layers": [1, 2],
    "lr": [1e-3, 3e-3],
    "bidirectional": [False, True],
}
GRID_WIDE = {  # --grid wide: the 8 hyperparameters of the default space, 2 levels each (3 cells): 384 points
    **GRID,
    "dropout": [0.0, 0.2],
    "batch_size": [32, 64],
    "clip_norm": [0.5, 1.0],
}
# The grid's space with its levels opened into ranges: what TPE searches in the grid-ranges arms.
GRID_RANGES = {
    "cell": {"choices": GRID["cell"]},
    "hidden_size": {"low": 64, "high": 128, "step": 16},
    "num_layers": {"low": 1, "high": 2},
    "lr": {"low": 1e-3, "high": 3e-3, "log": True},
    "bidirectional": {"choices": [False, True]},
}
DOC_PLOTS = ("optimization_history", "intermediate_values", "param_importances")


@dataclass
class Arm:
    name: str
    space: SearchSpace
    sampler: str
    pruner: str
    target: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    timeline: list[tuple[int, float]] = field(default_factory=list)  # (trial number, arm wall time at its end)

    def progress(self, study) -> float:
        return finished(study) / self.target


def summarise(arm: Arm, study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    selected = min(complete, key=lambda t: t.value)
    best_acc = max(t.user_attrs["val_accuracy"] for t in complete)
    return {
        "arm": arm.name,
        "sampler": arm.sampler,
        "pruner": arm.pruner,
        "hyperparameters": len(arm.space.params),
        "trials": len([t for t in trials if t.state.is_finished()]),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "epochs_trained": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "wall_s": round(arm.wall_s, 1),
        "cpu_s": round(arm.cpu_s, 1),
        "best_val_accuracy": best_acc,
        "selected_trial": selected.number,
        "selected_val_loss": selected.value,
        "selected_val_accuracy": selected.user_attrs["val_accuracy"],
        "selected_test_accuracy": selected.user_attrs.get("test_accuracy"),
        "selected_params": selected.params,
    }


def wall_to_reach(arm: Arm, study: optuna.Study, accuracy: float) -> float | None:
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, wall in arm.timeline:
        t = by_number[number]
        if t.state == TrialState.COMPLETE and t.user_attrs["val_accuracy"] >= accuracy:
            return round(wall, 1)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="JapaneseVowels")
    p.add_argument("--trials", type=int, default=30, help="TPE trials (default 30)")
    p.add_argument("--epochs", type=int, default=30, help="epoch budget of every trial (default 30)")
    p.add_argument("--patience", type=int, default=8, help="early-stopping patience of every trial (default 8)")
    p.add_argument("--arms", default="median,hyperband,median:wide,hyperband:wide",
                   help="TPE arms as pruner[:space], space = grid-ranges (default), wide, or a space file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default="results/search")
    p.add_argument("--plots-to", dest="plots_to", help="also write the TPE studies' main plots here (docs/img)")
    p.add_argument("--grid", default="small",
                   help="small (5 hyperparameters, 48 points), wide (8 hyperparameters, 384 points) or a space file")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset(args.dataset, seed=args.seed)
    base = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed)
    if args.grid in ("small", "wide"):
        levels = GRID if args.grid == "small" else GRID_WIDE
        grid_space = parse_space({"params": {k: {"choices": v} for k, v in levels.items()}}, f"{args.grid} grid")
    else:
        grid_space = load_space(args.grid)
    arms = [Arm("grid", grid_space, "grid", "none", grid_space.grid_size())]
    for spec in filter(None, args.arms.split(",")):
        pruner, _, where = spec.partition(":")
        if pruner not in ("median", "hyperband"):
            raise SystemExit(f"--arms: {spec!r}: the pruner must be median or hyperband")
        if where in ("", "grid-ranges"):
            space, suffix = parse_space({"params": GRID_RANGES}, "grid ranges"), ""
        elif where == "wide":
            space, suffix = default_space(splits.train.task), "-wide"
        else:
            space, suffix = load_space(where), f"-{Path(where).stem}"
        arms.append(Arm(f"tpe-{pruner}{suffix}", space, "tpe", pruner, args.trials))
    if len({a.name for a in arms}) != len(arms):
        raise SystemExit("--arms: each pruner/space pair once")
    studies, storages, objectives = {}, {}, {}
    for arm in arms:
        db = out / f"{arm.name}.db"
        db.unlink(missing_ok=True)  # a fresh study per run: every arm starts from nothing
        objective = Objective(splits, base, arm.space)
        opened = open_study(f"sqlite:///{db.resolve()}", arm.name,
                            StudySpec(args.dataset, splits.train.task, arm.space, base),
                            make_sampler(arm.sampler, arm.space, args.seed),
                            make_pruner(arm.pruner, objective.max_steps))
        studies[arm.name], storages[arm.name], objectives[arm.name] = opened.study, opened.storage, objective

    # Warm-up, untimed: the first training runs of a process pay one-time costs (allocator, kernel
    # selection) that would otherwise land on whichever arm runs first.
    for cell in ("lstm", "gru", "rnn"):
        train(splits, replace(base, cell=cell, hidden_size=16, num_layers=2, bidirectional=True, epochs=1,
                              refit=False))
    print(f"grid: {arms[0].target} trials; {', '.join(a.name for a in arms[1:])}: {args.trials} trials each; "
          f"{args.epochs} epochs max, patience {args.patience}, {args.threads} torch thread(s)", flush=True)
    while True:
        pending = [a for a in arms if finished(studies[a.name]) < a.target]
        if not pending:
            break
        arm = min(pending, key=lambda a: a.progress(studies[a.name]))
        study = studies[arm.name]
        wall, cpu = time.perf_counter(), time.process_time()
        run_trials(study, storages[arm.name], objectives[arm.name], target=finished(study) + 1)
        arm.wall_s += time.perf_counter() - wall
        arm.cpu_s += time.process_time() - cpu
        last = max(study.get_trials(deepcopy=False), key=lambda t: t.number)
        arm.timeline.append((last.number, arm.wall_s))
        print(f"{arm.name:18s} trial {last.number:2d} {last.state.name.lower():8s} "
              f"val_acc={last.user_attrs.get('val_accuracy', float('nan')):.4f} "
              f"epochs={last.user_attrs.get('epochs_run')} arm wall {arm.wall_s:6.0f}s", flush=True)

    results = {a.name: summarise(a, studies[a.name]) for a in arms}
    grid = results["grid"]
    verdict = {}
    for arm in arms[1:]:
        r = results[arm.name]
        r["wall_s_to_reach_grid_best"] = wall_to_reach(arm, studies[arm.name], grid["best_val_accuracy"])
        reaches = r["best_val_accuracy"] >= grid["best_val_accuracy"]
        wall_ratio = round(r["wall_s"] / grid["wall_s"], 3)
        verdict[arm.name] = {"reaches_grid_best_val_accuracy": reaches, "wall_ratio": wall_ratio,
                             "cpu_ratio": round(r["cpu_s"] / grid["cpu_s"], 3), "done": reaches and wall_ratio < 0.5}
    given = sys.argv[1:] if argv is None else argv
    report = {"command": "python -m rnnserve.bench.search " + " ".join(given),
              "config": {**vars(args), "base": base.to_dict(),
                         "spaces": {a.name: a.space.to_dict() for a in arms}}, "arms": results, "verdict": verdict}
    (out / "search_bench.json").write_text(json.dumps(report, indent=2))
    for arm in arms:
        write_table(ranked_rows(studies[arm.name]), out / arm.name)
        if arm.sampler == "grid":
            continue
        plots, _ = write_plots(studies[arm.name], out / arm.name)
        if args.plots_to:
            Path(args.plots_to).mkdir(parents=True, exist_ok=True)
            for plot in plots:
                kind = plot.stem.removeprefix("search_")
                if kind in DOC_PLOTS:
                    shutil.copy(plot, Path(args.plots_to) / f"search_{arm.name}_{kind}.png")

    keys = ["trials", "complete", "pruned", "epochs_trained", "wall_s", "cpu_s", "best_val_accuracy",
            "selected_val_accuracy", "selected_test_accuracy"]
    print("\n| arm | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for r in results.values():
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) and k.endswith("accuracy") else str(r[k]) for k in keys]
        print(f"| {r['arm']} | " + " | ".join(cells) + " |")
    print(json.dumps(verdict))
    for name in verdict:
        print(f"{name} reached the grid's best validation accuracy after {results[name]['wall_s_to_reach_grid_best']}s "
              "of its wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
