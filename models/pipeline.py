"""``rnnserve train``: dataset -> training (with diagnostics) -> checkpoint + history + plots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .checkpoint import save_checkpoint
from .data import load_dataset
from .diagnostics import plot_history
from .train import TrainConfig, TrainResult, train

CHECKPOINT = "checkpoint.pt"


def train_to_dir(
    dataset: str, out_dir: Path, config: TrainConfig, progress: Callable[[dict], None] | None = None
) -> TrainResult:
    splits = load_dataset(dataset, seed=config.seed)
    result = train(splits, config, progress)
    lengths = splits.train.lengths
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out_dir / CHECKPOINT,
        result.model,
        labels=splits.train.labels,
        dataset=dataset,
        metrics=result.metrics,
        train_lengths=(int(lengths.min()), int(lengths.max())),
    )
    (out_dir / "history.json").write_text(
        json.dumps({"config": config.to_dict(), "metrics": result.metrics, "epochs": result.history}, indent=1)
    )
    plot_history(result.history, out_dir / "training.png", title=f"{dataset}: {config.cell}")
    return result
