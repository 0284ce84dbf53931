"""PNG plots of training history: loss / accuracy curves and per-layer gradient norms."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [r for r in history if r.get("phase", "select") == "select"] or history
    epochs = [r["epoch"] for r in history]
    metric = "accuracy" if "train_accuracy" in history[0] else "rmse"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [r["train_loss"] for r in history], label="train")
    if "val_loss" in history[0]:
        axes[0].plot(epochs, [r["val_loss"] for r in history], label="val")
    axes[0].set(title="loss", xlabel="epoch", yscale="log")
    axes[0].legend()
    axes[1].plot(epochs, [r[f"train_{metric}"] for r in history], label="train")
    if f"val_{metric}" in history[0]:
        axes[1].plot(epochs, [r[f"val_{metric}"] for r in history], label="val")
    axes[1].set(title=metric, xlabel="epoch")
    axes[1].legend()
    for group in history[0]["layer_grad_norm"]:
        axes[2].plot(epochs, [r["layer_grad_norm"][group] for r in history], label=group)
    axes[2].plot(epochs, [r["grad_norm_max"] for r in history], "k:", label="total (max/step)")
    axes[2].set(title="gradient norm per layer (pre-clip)", xlabel="epoch", yscale="log")
    axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
