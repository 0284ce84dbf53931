"""``rnnserve train``: dataset -> recipe -> training (with diagnostics) -> checkpoint + history +
plot, and a one-line verdict: test accuracy against 1-NN DTW on the same split."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .baseline import Baseline, baselines
from .checkpoint import save_checkpoint, save_held_out
from .data import Splits, load_dataset
from .diagnostics import Diagnosis, diagnose, plot_history
from .recipe import Recipe, default_recipe
from .train import TrainConfig, TrainingDiverged, TrainResult, merge, train

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainedRun:
    result: TrainResult | None  # None when training diverged (no checkpoint is written)
    config: TrainConfig
    reasons: dict[str, str]  # why each recipe choice was made
    diagnoses: list[Diagnosis]
    baselines: list[Baseline]  # 1-NN DTW (classification, one regression target); the training mean (regression)
    verdict: str
    out_dir: Path

    @property
    def metrics(self) -> dict:
        return {} if self.result is None else self.result.metrics

    @property
    def baseline(self) -> Baseline | None:
        """1-NN DTW, where it was computed."""
        return next((b for b in self.baselines if b.name == "1-NN DTW"), None)


def verdict(metrics: dict, baselines: list[Baseline], diagnoses: list[Diagnosis], diverged: str | None) -> str:
    """One line: the test metric against each baseline on the same split; good when at least as good
    as the best of them."""
    codes = ", ".join(d.code.replace("_", " ") for d in diagnoses)
    if diverged:
        return f"verdict: training diverged ({codes}): no checkpoint written"
    classification = "test_accuracy" in metrics
    value = metrics["test_accuracy"] if classification else metrics["test_rmse"]
    name = "test accuracy" if classification else "test RMSE"
    shown = f"{value:.3f}" if classification else f"{value:.4g}"
    if not baselines:
        head = f"verdict: {name} {shown} (no baseline computed)"
        return head + (f"; diagnosed: {codes}" if codes else "")
    if classification:
        best = max(baselines, key=lambda b: b.value)
        good = value >= best.value
        listed = " and ".join(f"{b.name} {b.value:.3f}" for b in baselines)
        head = f"verdict: {name} {shown} vs {listed} on the same split ({100 * (value - best.value):+.1f} points): "
    else:
        best = min(baselines, key=lambda b: b.value)
        good = value <= best.value
        listed = " and ".join(f"{b.name} {b.value:.4g}" for b in baselines)
        head = f"verdict: {name} {shown} vs {listed} on the same split (lower is better): "
    if good:
        what = "the baseline" if len(baselines) == 1 else "every baseline"
        return head + f"at least as good as {what}" + (f"; diagnosed: {codes}" if codes else "")
    what = "the baseline" if len(baselines) == 1 else f"the better baseline ({best.name})"
    return head + f"BELOW {what}; do not ship it as is" + (f" (diagnosed: {codes})" if codes else "")


def train_to_dir(
    dataset: str,
    out_dir: Path,
    config: TrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    *,
    overrides: dict | None = None,
    baseline: bool = True,
    splits: Splits | None = None,
    data: dict | None = None,
) -> TrainedRun:
    """Train on ``dataset`` (or on ``splits`` read elsewhere, e.g. from the user's files, ``data``
    saying where from and how they were split) and write checkpoint.pt, the held-out split export
    needs (heldout.npz), history.json and training.png to ``out_dir``. ``config`` is used as given;
    without it the default recipe is chosen from the data, with ``overrides`` (explicit options)
    applied. With ``baseline`` the baselines (1-NN DTW; the training mean for regression) are fit on
    the same training series and scored on the same test split for the verdict."""
    if config is not None and overrides:
        raise ValueError("give either a full config or recipe overrides, not both")
    seed = (overrides or {}).get("seed", 0) if config is None else config.seed
    splits = splits or load_dataset(dataset, seed=seed)
    recipe = Recipe(config, {}) if config is not None else default_recipe(splits, overrides)
    diverged, result = None, None
    try:
        result = train(splits, recipe.config, progress)
        history = result.history
    except TrainingDiverged as exc:
        diverged, history = str(exc), exc.history
    found = diagnose(history, splits, recipe.config, diverged)
    base = baselines(merge(splits.train, splits.val), splits.test) if baseline and not diverged else []
    metrics = {} if result is None else result.metrics
    line = verdict(metrics, base, found, diverged)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result is not None:
        lengths = splits.train.lengths
        save_checkpoint(out_dir / CHECKPOINT, result.model, labels=splits.train.labels, dataset=dataset,
                        metrics=metrics, train_lengths=(int(lengths.min()), int(lengths.max())))
        save_held_out(out_dir, splits.test)
    headline = "test_accuracy" if splits.train.task == "classification" else "test_rmse"
    record = {
        "task": splits.train.task,
        headline: metrics.get(headline),  # also under metrics; regression in target units
        "data": data or {"source": "dataset", "dataset": dataset},
        "config": recipe.config.to_dict(),
        "recipe": recipe.reasons,
        "metrics": metrics,
        "baseline": next((b.to_dict() for b in base if b.name == "1-NN DTW"), None),
        "baselines": [b.to_dict() for b in base],
        "diagnostics": [d.to_dict() for d in found],
        "verdict": line,
        "diverged": diverged,
        "epochs": history,
    }
    (out_dir / "history.json").write_text(json.dumps(record, indent=1))
    plot_history(history, out_dir / "training.png", title=f"{dataset}: {recipe.config.cell}",
                 diagnoses=found, verdict=line)
    return TrainedRun(result, recipe.config, recipe.reasons, found, base, line, out_dir)
