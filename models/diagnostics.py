"""What went wrong in a training run, named, with the evidence and a remedy; and the PNG plot of
the history (loss / accuracy curves, per-layer gradient norms, gradient through time) with the
diagnoses written on it.

Every rule reads only the history rows ``models/train.py`` records (and the sizes of the splits),
so the same diagnosis appears in the CLI output, in history.json and on the plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import Splits
from .probes import REACH_FRACTION
from .train import TrainConfig

# Underfitting: training accuracy (un-augmented, end of the selection phase) below this...
UNDERFIT_ACCURACY = 0.9
# ... and "near chance" when it closes less than this share of the gap from chance to 1.
NEAR_CHANCE_SHARE = 0.25
UNDERFIT_R2 = 0.5  # regression: training R^2 below this
# Overfitting: train - validation accuracy at the end of selection, or a validation loss that
# rose this much above its minimum while the training loss kept falling.
OVERFIT_GAP = 0.15
OVERFIT_LOSS_RISE = 1.5
# Exploding: the step norm passed 10x the clip norm in this share of epochs, or clipping on most
# steps while the gradient norm grew this much from the first to the last quarter of training.
EXPLODING_EPOCH_SHARE = 0.2
CLIPPED_MOST = 0.5
NORM_GROWTH = 10.0
VANISHING_EPOCH_SHARE = 0.5  # a layer flagged vanishing in at least this share of epochs
MIN_VALIDATION = 30  # fewer validated series: one series moves accuracy by > 3 points


@dataclass(frozen=True)
class Diagnosis:
    # underfitting | overfitting | exploding_gradients | vanishing_gradients | vanishing_through_time |
    # small_validation
    code: str
    finding: str  # what was measured
    remedy: str

    def line(self) -> str:
        return f"{self.code.replace('_', ' ')}: {self.finding}. Remedy: {self.remedy}"

    def to_dict(self) -> dict:
        return asdict(self)


def _select_curve(history: list[dict]) -> list[dict]:
    """Selection-phase rows per epoch; with k folds, the mean over the folds of each numeric key."""
    rows = [r for r in history if r.get("phase", "select") == "select"]
    if not any("fold" in r for r in rows):
        return rows
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:
        by_epoch.setdefault(r["epoch"], []).append(r)
    curve = []
    for epoch in sorted(by_epoch):
        group = by_epoch[epoch]
        merged = {"epoch": epoch}
        for key, value in group[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool) and all(key in g for g in group):
                merged[key] = float(np.mean([g[key] for g in group]))
        curve.append(merged)
    return curve


def validated_series(splits: Splits, config: TrainConfig) -> tuple[int, str]:
    if config.folds >= 2:
        return len(splits.train) + len(splits.val), f"{config.folds} folds of train+val"
    return len(splits.val), "the validation split"


def diagnose(history: list[dict], splits: Splits, config: TrainConfig, diverged: str | None = None) -> list[Diagnosis]:
    """Every problem the history shows, most fundamental first."""
    found: list[Diagnosis] = []
    curve = _select_curve(history)
    every = [r for r in history if "grad_norm_mean" in r]
    task = splits.train.task
    n_val, where = validated_series(splits, config)
    if diverged:
        found.append(Diagnosis(
            "exploding_gradients", f"training diverged ({diverged})",
            "lower --lr (e.g. by 10x) or --clip-norm; an LSTM or GRU explodes less than a vanilla RNN"))
    elif every:
        exploding = np.mean([bool(r.get("exploding")) for r in every])
        clipped = np.mean([r["clipped_fraction"] for r in every])
        quarter = max(1, len(every) // 4)
        growth = np.mean([r["grad_norm_mean"] for r in every[-quarter:]]) / max(
            1e-30, np.mean([r["grad_norm_mean"] for r in every[:quarter]]))
        if exploding >= EXPLODING_EPOCH_SHARE or (clipped >= CLIPPED_MOST and growth >= NORM_GROWTH):
            found.append(Diagnosis(
                "exploding_gradients",
                f"step gradient norm above {10 * config.clip_norm:g} (10x the clip norm) in {exploding:.0%} of "
                f"epochs, clipped on {clipped:.0%} of steps, mean norm grew {growth:.3g}x over training",
                "lower --lr or --clip-norm; prefer an LSTM or GRU to a vanilla RNN"))
    if curve:
        last = curve[-1]
        # Underfitting is judged on the final model: the refit's last epoch when there is one.
        fitted = next((r for r in reversed(history) if r.get("phase") == "refit"), last)
        if task == "classification" and "train_accuracy" in fitted:
            chance = 1.0 / max(1, splits.train.output_size)
            acc = fitted["train_accuracy"]
            near = acc < chance + NEAR_CHANCE_SHARE * (1 - chance)
            if acc < UNDERFIT_ACCURACY:
                found.append(Diagnosis(
                    "underfitting",
                    f"training accuracy {acc:.1%} after {int(fitted['epoch'])} epochs"
                    + (f", near chance ({chance:.1%})" if near else ""),
                    "train longer (--epochs), raise --lr, or a wider model (--hidden-size); check that inputs "
                    "and labels match" if near else
                    "train longer (--epochs) or a wider model (--hidden-size); lighter augmentation "
                    "(--noise, --warp, --scale)"))
        elif task == "regression" and "train_eval_loss" in fitted:
            var = float(np.var(splits.train.targets))
            r2 = 1 - fitted["train_eval_loss"] / var if var > 0 else 0.0
            if r2 < UNDERFIT_R2:
                found.append(Diagnosis(
                    "underfitting", f"training R^2 {r2:.2f} after {int(fitted['epoch'])} epochs",
                    "train longer (--epochs), raise --lr, or a wider model (--hidden-size)"))
        if "val_loss" in last:
            best = min(curve, key=lambda r: r["val_loss"])
            rise = last["val_loss"] / max(best["val_loss"], 1e-12)
            train_fell = last.get("train_eval_loss", 0) < best.get("train_eval_loss", 0)
            gap = last.get("train_accuracy", 0) - last.get("val_accuracy", 0) if "val_accuracy" in last else 0.0
            diverging = rise >= OVERFIT_LOSS_RISE and train_fell
            if gap >= OVERFIT_GAP or (diverging and (gap > 0.05 or task == "regression")):
                detail = (f"validation loss rose {rise:.2g}x from its minimum at epoch {int(best['epoch'])} while "
                          f"the training loss kept falling" if diverging else "")
                if "val_accuracy" in last:
                    acc = f"training accuracy {last['train_accuracy']:.1%} vs validation {last['val_accuracy']:.1%}"
                    detail = f"{detail}; {acc}" if detail else acc
                found.append(Diagnosis(
                    "overfitting", detail,
                    "more training data, stronger augmentation (--noise, --warp, --scale), --weight-decay, or a "
                    "smaller model (--hidden-size)"))
    if every:
        layers = every[0]["layer_grad_norm"]
        share = {g: np.mean([g in r["vanishing_layers"] for r in every]) for g in layers}
        weak = [g for g, s in share.items() if s >= VANISHING_EPOCH_SHARE]
        if weak:
            ratio = np.median([r["layer_grad_norm"][weak[0]] / max(max(r["layer_grad_norm"].values()), 1e-30)
                               for r in every])
            found.append(Diagnosis(
                "vanishing_gradients",
                f"{', '.join(weak)} gradient {ratio:.1e} of the largest layer's (median over epochs)",
                "fewer layers (--num-layers), an LSTM or GRU instead of a vanilla RNN"))
    probes = [r["time_gradient"] for r in curve if "time_gradient" in r] or [
        r["time_gradient"] for r in history if "time_gradient" in r]
    if probes:
        tg = probes[-1]
        if tg["first_to_peak"] < REACH_FRACTION:
            found.append(Diagnosis(
                "vanishing_through_time",
                f"over the {tg['length']}-step probe sequences the loss gradient at the first step is "
                f"{tg['first_to_peak']:.1e} of its peak; it stays above {REACH_FRACTION:g} of the peak only over the "
                f"last {tg['reach']} steps",
                ("an LSTM or GRU with --init chrono and --target-replication (the defaults)" if task == "classification"
                 else "an LSTM or GRU with --init chrono (the default), --frame to read several steps per recurrent "
                 "step") + ", or shorter sequences (crop or downsample before training)"))
    if n_val < MIN_VALIDATION:
        remedy = ("use --folds 5 to validate on every training series" if config.folds < 2 else
                  "more labelled series; treat the validation score as a rough estimate")
        note = "" if config.early_stopping or config.folds >= 2 else "; early stopping is off, the full schedule ran"
        coarse = (f"one series moves accuracy by {1 / max(n_val, 1):.0%}, too coarse to select on"
                  if task == "classification" else "its error is a noisy estimate to select the epoch count on")
        found.append(Diagnosis("small_validation", f"{where} has {n_val} series: {coarse}{note}", remedy))
    return found


def plot_history(history: list[dict], path: Path, title: str = "", diagnoses: list[Diagnosis] | None = None,
                 verdict: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = _select_curve(history) or history
    notes = [d.line() for d in diagnoses or []]
    text = "\n".join(([verdict] if verdict else []) + (notes or ["diagnostics: nothing found"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not curve:  # diverged in the first epoch: no curve to draw, the diagnoses still go on the plot
        fig = plt.figure(figsize=(20, 2 + 0.28 * len(text.splitlines())))
        fig.text(0.01, 0.5, (f"{title}: " if title else "") + "no epoch completed\n" + text, fontsize=9,
                 va="center", ha="left", wrap=True, color="darkred")
        fig.savefig(path, dpi=90, metadata={"Title": title or "training", "Description": text})
        plt.close(fig)
        return path
    epochs = [r["epoch"] for r in curve]
    metric = "accuracy" if "train_accuracy" in curve[0] else "rmse"
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6 + 0.28 * (len(notes) + bool(verdict))))
    train_key = "train_eval_loss" if "train_eval_loss" in curve[0] else "train_loss"
    axes[0].plot(epochs, [r[train_key] for r in curve], label="train")
    if "val_loss" in curve[0]:
        axes[0].plot(epochs, [r["val_loss"] for r in curve], label="val")
    axes[0].set(title="loss" + (" (mean over folds)" if any("fold" in r for r in history) else ""),
                xlabel="epoch", yscale="log")
    axes[0].legend()
    axes[1].plot(epochs, [r[f"train_{metric}"] for r in curve], label="train")
    if f"val_{metric}" in curve[0]:
        axes[1].plot(epochs, [r[f"val_{metric}"] for r in curve], label="val")
    axes[1].set(title=metric, xlabel="epoch")
    axes[1].legend()
    grads = [r for r in history if r.get("phase", "select") == "select" and "layer_grad_norm" in r]
    grads = [r for r in grads if r.get("fold", 1) == 1]
    for group in grads[0]["layer_grad_norm"]:
        axes[2].plot([r["epoch"] for r in grads], [r["layer_grad_norm"][group] for r in grads], label=group)
    axes[2].plot([r["epoch"] for r in grads], [r["grad_norm_max"] for r in grads], "k:", label="total (max/step)")
    axes[2].set(title="gradient norm per layer (pre-clip)", xlabel="epoch", yscale="log")
    axes[2].legend(fontsize=8)
    probes = [r for r in grads if "time_gradient" in r]
    for r in (probes[:1] + probes[-1:]) if len(probes) > 1 else probes:
        tg = r["time_gradient"]
        axes[3].plot(tg["steps_back"], tg["log10_relative"], label=f"epoch {r['epoch']}")
    axes[3].axhline(np.log10(REACH_FRACTION), color="grey", ls="--", lw=0.8)
    axes[3].set(title="gradient through time: log10 |dL/dx_t| / peak", xlabel="steps before the last step")
    if probes:
        axes[3].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.text(0.01, 0.01, text, fontsize=8.5, va="bottom", ha="left", wrap=True,
             color="darkred" if notes else "darkgreen")
    fig.tight_layout(rect=(0, 0.06 * (1 + len(notes) + bool(verdict)) / 2, 1, 1))
    # The same text as PNG metadata, so a reader (or a test) can get it without OCR.
    fig.savefig(path, dpi=90, metadata={"Title": title or "training", "Description": text})
    plt.close(fig)
    return path
