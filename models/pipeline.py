"""``rnnserve train``: dataset -> recipe -> training (with diagnostics) -> checkpoint + history +
plot, and a one-line verdict: test accuracy against 1-NN DTW on the same split."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .baseline import Baseline, dtw_baseline
from .checkpoint import save_checkpoint
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
    baseline: Baseline | None
    verdict: str
    out_dir: Path

    @property
    def metrics(self) -> dict:
        return {} if self.result is None else self.result.metrics


def verdict(metrics: dict, baseline: Baseline | None, diagnoses: list[Diagnosis], diverged: str | None) -> str:
    codes = ", ".join(d.code.replace("_", " ") for d in diagnoses)
    if diverged:
        return f"verdict: training diverged ({codes}): no checkpoint written"
    classification = "test_accuracy" in metrics
    value = metrics["test_accuracy"] if classification else metrics["test_rmse"]
    name = "test accuracy" if classification else "test RMSE"
    shown = f"{value:.3f}" if classification else f"{value:.4g}"
    if baseline is None:
        head = f"verdict: {name} {shown} (no baseline computed)"
        return head + (f"; diagnosed: {codes}" if codes else "")
    if classification:
        delta = 100 * (value - baseline.value)
        good = value >= baseline.value
        head = (f"verdict: {name} {shown} vs {baseline.name} {baseline.value:.3f} on the same split "
                f"({delta:+.1f} points): ")
    else:
        good = value <= baseline.value
        head = (f"verdict: {name} {shown} vs {baseline.name} {baseline.value:.4g} on the same split "
                f"(lower is better): ")
    if good:
        return head + "at least as good as the baseline" + (f"; diagnosed: {codes}" if codes else "")
    return head + "BELOW the baseline; do not ship it as is" + (f" (diagnosed: {codes})" if codes else "")


def train_to_dir(
    dataset: str,
    out_dir: Path,
    config: TrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    *,
    overrides: dict | None = None,
    baseline: bool = True,
    splits: Splits | None = None,
) -> TrainedRun:
    """Train on ``dataset`` and write checkpoint.pt, history.json and training.png to ``out_dir``.
    ``config`` is used as given; without it the default recipe is chosen from the data, with
    ``overrides`` (explicit options) applied. With ``baseline`` the 1-NN DTW baseline is fit on the
    same training series and scored on the same test split for the verdict."""
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
    base = dtw_baseline(merge(splits.train, splits.val), splits.test) if baseline and not diverged else None
    line = verdict({} if result is None else result.metrics, base, found, diverged)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result is not None:
        lengths = splits.train.lengths
        save_checkpoint(
            out_dir / CHECKPOINT,
            result.model,
            labels=splits.train.labels,
            dataset=dataset,
            metrics=result.metrics,
            train_lengths=(int(lengths.min()), int(lengths.max())),
        )
    record = {
        "config": recipe.config.to_dict(),
        "recipe": recipe.reasons,
        "metrics": {} if result is None else result.metrics,
        "baseline": None if base is None else base.to_dict(),
        "diagnostics": [d.to_dict() for d in found],
        "verdict": line,
        "diverged": diverged,
        "epochs": history,
    }
    (out_dir / "history.json").write_text(json.dumps(record, indent=1))
    plot_history(history, out_dir / "training.png", title=f"{dataset}: {recipe.config.cell}",
                 diagnoses=found, verdict=line)
    return TrainedRun(result, recipe.config, recipe.reasons, found, base, line, out_dir)

