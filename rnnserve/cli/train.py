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
    say(
        f"{row['phase']:6s} epoch {row['epoch']:3d} train_loss={row['train_loss']:.4f}{val}{extra} "
        f"grad_norm={row['grad_norm_mean']:.3g} clipped={row['clipped_fraction']:.0%}{flags} "
        f"({row['seconds']:.1f}s)"
    )


def train_config(args):
    from rnnserve.models.train import TrainConfig

    fields = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if getattr(args, k, None) is not None}
    return TrainConfig(**fields)


def cmd_train(args) -> int:
    from rnnserve.models.pipeline import train_to_dir

    out = Path(args.workdir) / args.name
    config = train_config(args)
    say(f"training {config.cell} on {args.dataset} -> {out}")
    started = time.perf_counter()
    result = train_to_dir(args.dataset, out, config, _epoch_line)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}
    say(f"done in {time.perf_counter() - started:.0f}s: {shown}")
    say(f"checkpoint, history.json and training.png are in {out}")
    return 0


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


def register(sub) -> None:
    sp = sub.add_parser("train", help="train a model (loss curves, gradient-norm diagnostics)")
    train_options(sp)
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
