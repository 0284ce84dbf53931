"""Grid hyperparameter search over cell type, hidden size, layers, learning rate and batch size.

Each trial runs the early-stopping phase only (no refit) and is ranked by validation loss; the
table (JSON + Markdown) records test accuracy too, for information, never for selection."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .data import Splits
from .train import TrainConfig, train

DEFAULT_GRID: dict[str, Sequence] = {
    "cell": ("lstm", "gru", "rnn"),
    "hidden_size": (64, 128),
    "num_layers": (1, 2),
    "lr": (3e-3,),
    "batch_size": (32,),
}


def grid(space: dict[str, Sequence]) -> list[dict]:
    unknown = set(space) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown hyperparameters: {sorted(unknown)}")
    keys = list(space)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*space.values())]


def search(
    splits: Splits,
    base: TrainConfig,
    space: dict[str, Sequence] = DEFAULT_GRID,
    progress: Callable[[int, int, dict], None] | None = None,
) -> list[dict]:
    """Run every grid point; returns rows sorted best first (lowest validation loss)."""
    rows = []
    trials = grid(space)
    for i, params in enumerate(trials, 1):
        config = replace(base, refit=False, **params)
        started = time.perf_counter()
        result = train(splits, config)
        row = {
            **params,
            "val_loss": result.metrics["val_loss"],
            "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - started, 2),
        }
        for key in ("val_accuracy", "test_accuracy", "val_rmse", "test_rmse"):
            if key in result.metrics:
                row[key] = result.metrics[key]
        rows.append(row)
        if progress is not None:
            progress(i, len(trials), row)
    rows.sort(key=lambda r: r["val_loss"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def write_table(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "search.json"
    json_path.write_text(json.dumps(rows, indent=2))
    cols = ["rank"] + [c for c in rows[0] if c != "rank"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    md_path = out_dir / "search.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
