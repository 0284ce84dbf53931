"""``rnnserve train``, ``search`` and ``datasets``: the offline side (imports torch lazily)."""

from __future__ import annotations

import time
from pathlib import Path

from .common import say, train_options


def _epoch_line(row: dict) -> None:
    metric = next((k for k in ("val_accuracy", "train_accuracy", "val_rmse", "train_rmse") if k in row), None)
    extra = f" {metric}={row[metric]:.4f}" if metric else ""
    val = f" val_loss={row['val_loss']:.4f}" if "val_loss" in row else ""
    flags = (" VANISHING:" + ",".join(row["vanishing_layers"])) if row["vanishing_layers"] else ""
    flags += " EXPLODING" if row["exploding"] else ""
    fold = f" fold {row['fold']}" if "fold" in row else ""
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

    return TrainConfig(**explicit_training_options(args))


def explicit_training_options(args) -> dict:
    """The training options given on the command line (the recipe chooses the rest)."""
    from rnnserve.models.train import TrainConfig

    return {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if getattr(args, k, None) is not None}


def cmd_train(args) -> int:
    from rnnserve.models.pipeline import train_to_dir

    out = Path(args.workdir) / args.name
    overrides = explicit_training_options(args)
    say(f"training on {args.dataset} -> {out}" + (f" with {overrides}" if overrides else ""))
    started = time.perf_counter()
    run = train_to_dir(args.dataset, out, None, _epoch_line, overrides=overrides,
                       baseline=getattr(args, "baseline", True))
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


def cmd_search(args) -> int:
    from rnnserve.models.data import load_dataset
    from rnnserve.models.search import search, write_table

    space = {
        "cell": args.cells.split(","),
        "hidden_size": [int(v) for v in args.hidden_sizes.split(",")],
        "num_layers": [int(v) for v in args.layers.split(",")],
        "lr": [float(v) for v in args.lrs.split(",")],
        "batch_size": [int(v) for v in args.batch_sizes.split(",")],
    }
    splits = load_dataset(args.dataset, seed=args.seed)
    rows = search(splits, train_config(args), space, progress=lambda i, n, row: say(f"trial {i}/{n}: {row}"))
    _, md = write_table(rows, Path(args.workdir) / args.name)
    print(md.read_text())
    return 0


def cmd_datasets(args) -> int:
    from rnnserve.models.data import aeon_datasets

    print("\n".join(aeon_datasets() + ["synthetic", "synthetic-regression"]))
    return 0


def recipe_options(sp) -> None:
    """Options of the default recipe beyond the common training options (`train` and `prepare`)."""
    sp.add_argument("--init", choices=["chrono", "default"], help="gate-bias initialisation (recipe: chrono)")
    sp.add_argument("--target-replication", dest="target_replication", type=float,
                    help="weight of the per-step training loss, 0-1 (recipe: 0.5)")
    sp.add_argument("--noise", type=float, help="training-time input noise, in feature spreads (recipe: 0.2)")
    sp.add_argument("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay")
    sp.add_argument("--warp", type=float, help="random time-stretch augmentation, +-fraction of the length")
    sp.add_argument("--scale", type=float, help="random amplitude-scaling augmentation, +-fraction")
    sp.add_argument("--folds", type=int, help="choose the epoch count on k folds of train+val (0: the val split)")
    sp.add_argument("--no-early-stopping", dest="early_stopping", action="store_false", default=None,
                    help="run the whole schedule instead of stopping on the validation split")
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
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("search", help="grid hyperparameter search, writes a ranked table")
    train_options(sp)
    sp.add_argument("--cells", default="lstm,gru,rnn")
    sp.add_argument("--hidden-sizes", dest="hidden_sizes", default="64,128")
    sp.add_argument("--layers", default="1,2")
    sp.add_argument("--lrs", default="0.003")
    sp.add_argument("--batch-sizes", dest="batch_sizes", default="32")
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("datasets", help="list datasets usable offline")
    sp.set_defaults(func=cmd_datasets)
