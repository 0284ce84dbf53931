"""Save / load a trained model with everything export needs: spec, weights, labels, provenance, and
the held-out (test) split it was scored on, from which export takes the drift reference statistics
and the golden sequences (saved beside the checkpoint: the split may come from the user's files,
which export cannot read again by a dataset name)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnserve.bundle.batch import pad

from .data import SequenceData, load_dataset
from .nets import ModelSpec, SequenceModel, build_model

HELD_OUT = "heldout.npz"


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


def save_held_out(out_dir: Path, data: SequenceData) -> Path:
    """``data`` as ``<out_dir>/heldout.npz``: padded float32 ``X``, ``lengths``, ``targets``, ``labels``, ``task``
    (plain arrays: read back without pickles)."""
    x, lengths = pad(list(data.sequences))
    path = Path(out_dir) / HELD_OUT
    np.savez(path, X=x, lengths=lengths, targets=data.targets, labels=np.array(data.labels, dtype=str),
             task=np.array(data.task))
    return path


def load_held_out(checkpoint_path: Path, dataset: str) -> SequenceData:
    """The held-out split saved beside ``checkpoint_path``; for checkpoints written before it was,
    the test split of ``dataset`` loaded by name."""
    path = Path(checkpoint_path).parent / HELD_OUT
    if not path.is_file():
        return load_dataset(dataset).test
    with np.load(path, allow_pickle=False) as saved:
        sequences = tuple(x[:n].copy() for x, n in zip(saved["X"], saved["lengths"], strict=True))
        return SequenceData(sequences, saved["targets"], tuple(str(v) for v in saved["labels"]), str(saved["task"]))
