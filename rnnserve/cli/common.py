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
    sp.add_argument("--dataset", default=DEFAULT_DATASET,
                    help="aeon classification dataset or synthetic (see `rnnserve datasets`)")
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
    sp.add_argument("--seed", type=int, help="training (and search) seed (default: 0)")


def export_options(sp) -> None:
    sp.add_argument("--checkpoint", help="default: <workdir>/<name>/checkpoint.pt")
    sp.add_argument("--atol", type=float, default=1e-5, help="parity tolerance (max abs error)")
    sp.add_argument("--stream-atol", dest="stream_atol", type=float, default=1e-4,
                    help="the chunked (streaming) gate's tolerance floor (max abs error; default 1e-4)")
    sp.add_argument("--max-length", dest="max_length", type=int, default=2000,
                    help="longest sequence (and stream) the parity gates test, plain and chunked")
    sp.add_argument("--max-batch", dest="max_batch", type=int, default=64,
                    help="largest batch (and number of interleaved streams) the parity gates test")
