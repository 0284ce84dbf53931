"""What the subcommands share: progress output and the training options."""

from __future__ import annotations

import argparse
import sys

DEFAULT_DATASET = "JapaneseVowels"
DEFAULT_NAME = "vowels"


def say(msg: str) -> None:
    print(f"[rnnserve] {msg}", file=sys.stderr, flush=True)


def name_options(sp) -> None:
    sp.add_argument("--name", default=DEFAULT_NAME, help="bundle / model name (default: vowels)")
    sp.add_argument("--workdir", default="artifacts", help="training outputs (default: artifacts/)")


def train_options(sp) -> None:
    name_options(sp)
    sp.add_argument("--dataset", help=f"a dataset shipped with aeon, or synthetic (see `rnnserve datasets`; "
                    f"default: {DEFAULT_DATASET}); or --data for your own files")
    sp.add_argument("--cell", choices=["lstm", "gru", "rnn"])
    sp.add_argument("--hidden-size", dest="hidden_size", type=int)
    sp.add_argument("--num-layers", dest="num_layers", type=int)
    sp.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None)
    sp.add_argument("--dropout", type=float)
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--batch-size", dest="batch_size", type=int)
    sp.add_argument("--lr", type=float)
    sp.add_argument("--clip-norm", dest="clip_norm", type=float)
    sp.add_argument("--patience", type=int)
    sp.add_argument("--weight-decay", dest="weight_decay", type=float)
    sp.add_argument("--noise", type=float, help="training-time input noise, in feature standard deviations")
    sp.add_argument("--min-refit-epochs", dest="min_refit_epochs", type=int)
    sp.add_argument("--seed", type=int, help="training (and search) seed, also of the splits (default: 0)")
    data_options(sp)


def data_options(sp) -> None:
    """Your own sequence files (``models/files``): the format from the extension."""
    from rnnserve.models.files.raw import FILLS
    from rnnserve.models.files.source import DEFAULT_MAX_MB
    from rnnserve.models.files.task import MAX_WHOLE_CLASSES, TASKS

    g = sp.add_argument_group("your own data files (instead of --dataset)")
    g.add_argument("--data", metavar="FILE", help="training data: .ts (UCR/UEA archive format), .csv in long format "
                   "(one row per time step: series id, optional time, features, target) or .npz (X, y[, lengths])")
    g.add_argument("--test-data", dest="test_data", metavar="FILE", help="test data, same format (default: a "
                   "stratified (classification) or random (regression) 20%% of --data, recorded in history.json)")
    g.add_argument("--id-col", dest="id_col", default="id", help="CSV: the series id column (default: id)")
    g.add_argument("--time-col", dest="time_col", help="CSV: the column that orders each series' steps, numbers or "
                   "ISO 8601 dates (default: 'time' if the file has it, else the rows' order)")
    g.add_argument("--target-col", dest="target_col", default="target",
                   help="CSV: the target column, the same on every row of a series (default: target)")
    g.add_argument("--feature-cols", dest="feature_cols", metavar="A,B,...",
                   help="CSV: the feature columns (default: every column but the id, time and target)")
    g.add_argument("--task", choices=TASKS, help="override the task the targets decide: text or integers are "
                   f"classes, so are whole numbers with at most {MAX_WHOLE_CLASSES} distinct values; other numbers "
                   "are regression targets")
    g.add_argument("--fill", choices=FILLS, help="fill missing (NaN, empty) and infinite values: zero, ffill (the "
                   "last value seen), linear (interpolated in time); default: refuse the file")
    g.add_argument("--max-file-mb", dest="max_file_mb", type=float, default=DEFAULT_MAX_MB,
                   help=f"refuse data files larger than this many MB (default: {DEFAULT_MAX_MB:g})")


def data_files(args):
    """The ``DataFiles`` the options name, or None for a named dataset (``--dataset``)."""
    from rnnserve.models.files.source import DataFiles
    from rnnserve.models.files.tabular import Columns

    if not getattr(args, "data", None):
        if getattr(args, "test_data", None):
            raise ValueError("--test-data needs --data (the training file)")
        return None
    if getattr(args, "dataset", None):
        raise ValueError("give --dataset or --data, not both")
    features = None
    if args.feature_cols is not None:
        features = tuple(c.strip() for c in args.feature_cols.split(",") if c.strip())
    return DataFiles(args.data, args.test_data, Columns(args.id_col, args.time_col, args.target_col, features),
                     args.task, args.fill, args.max_file_mb)


def export_options(sp) -> None:
    sp.add_argument("--checkpoint", help="default: <workdir>/<name>/checkpoint.pt")
    sp.add_argument("--atol", type=float, help="parity tolerance floor (max abs error; default 1e-5)")
    sp.add_argument("--stream-atol", dest="stream_atol", type=float,
                    help="the chunked (streaming) gate's tolerance floor (max abs error; default 1e-4)")
    sp.add_argument("--max-length", dest="max_length", type=int,
                    help="longest sequence (and stream) the parity gates test, plain and chunked (default 2000; "
                         "1000 for --module)")
    sp.add_argument("--max-batch", dest="max_batch", type=int,
                    help="largest batch (and number of interleaved streams) the parity gates test (default 64)")
