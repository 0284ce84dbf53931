"""Save / load a trained model with everything export needs (spec, weights, labels, provenance)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .nets import ModelSpec, SequenceModel, build_model


@dataclass(frozen=True)
class Checkpoint:
    spec: ModelSpec
    state_dict: dict
    labels: tuple[str, ...]
    dataset: str
    metrics: dict
    train_lengths: tuple[int, int]

    def build(self) -> SequenceModel:
        model = build_model(self.spec)
        model.load_state_dict(self.state_dict)
        model.eval()
        return model


def save_checkpoint(path: Path, model: SequenceModel, *, labels, dataset, metrics, train_lengths):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "spec": model.spec.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "labels": list(labels),
            "dataset": dataset,
            "metrics": dict(metrics),
            "train_lengths": list(train_lengths),
        },
        path,
    )


def load_checkpoint(path: Path) -> Checkpoint:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: run `rnnserve train` first")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return Checkpoint(
        spec=ModelSpec(**raw["spec"]),
        state_dict=raw["state_dict"],
        labels=tuple(raw["labels"]),
        dataset=raw["dataset"],
        metrics=raw["metrics"],
        train_lengths=tuple(raw["train_lengths"]),
    )
