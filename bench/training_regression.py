"""The regression half of the training benchmark's report (``bench/training.py`` runs the jobs): per
dataset, the recipe's test RMSE over seeds against 1-NN DTW regression and the training-mean
predictor on the same official split, as a table between the ``training-regression`` markers of
docs/BENCHMARKS.md and a figure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from rnnserve.harness.markdown import write_between

BEGIN, END = "<!-- training-regression:begin -->", "<!-- training-regression:end -->"


def summarise(rows: list[dict], baseline_of) -> list[dict]:
    """One row per regression dataset; ``baseline_of(rows, name, which)`` finds a baseline's row."""
    out = []
    for name in sorted({r["dataset"] for r in rows if r["kind"] == "rnn" and r["task"] == "regression"}):
        runs = [r for r in rows if r["kind"] == "rnn" and r["dataset"] == name]
        rmse = np.array([r["test_rmse"] for r in runs], dtype=float)
        val = np.array([r["val_rmse"] for r in runs], dtype=float)
        dtw, mean = baseline_of(rows, name), baseline_of(rows, name, "training mean")
        better = min((b["value"] for b in (dtw, mean) if b is not None), default=None)
        out.append({
            "dataset": name, "n_train": runs[0]["n_train"], "n_test": runs[0]["n_test"],
            "features": runs[0]["features"], "length": runs[0]["length"], "seeds": [r["seed"] for r in runs],
            "test_rmse": rmse.tolist(), "mean": float(rmse.mean()), "std": float(rmse.std()),
            "min": float(rmse.min()), "max": float(rmse.max()), "val_rmse": float(val.mean()),
            "dtw": None if dtw is None else dtw["value"], "training_mean": None if mean is None else mean["value"],
            "meets_target": None if better is None else bool(rmse.mean() <= better + 1e-12),
            "seconds_per_seed": float(sum(r["seconds"] for r in runs) / len(runs)),
            "diagnoses": dict(Counter(d["code"] for r in runs for d in r["diagnoses"])),
        })
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [
        f"Command: `{meta['command']}` ({meta['workers']} worker process(es), one torch thread each; "
        f"{meta['wall_seconds'] / 60:.1f} min wall for the whole run on {meta['host']}).",
        "",
        "| dataset | train / test | length | F | 1-NN DTW | training mean | RNN test RMSE: mean ± std (min–max) "
        "| ≤ better baseline | validation RMSE | s / seed | diagnoses (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        length = f"{s['length'][0]}" if s["length"][0] == s["length"][1] else f"{s['length'][0]}–{s['length'][1]}"
        dtw = "–" if s["dtw"] is None else f"{s['dtw']:.4f}"
        mean = "–" if s["training_mean"] is None else f"{s['training_mean']:.4f}"
        meets = "–" if s["meets_target"] is None else ("yes" if s["meets_target"] else "**no**")
        diag = ", ".join(f"{k.replace('_', ' ')} ({v})" for k, v in sorted(s["diagnoses"].items())) or "none"
        lines.append(
            f"| {s['dataset']} | {s['n_train']} / {s['n_test']} | {length} | {s['features']} | {dtw} | {mean} | "
            f"**{s['mean']:.4f}** ± {s['std']:.4f} ({s['min']:.4f}–{s['max']:.4f}) | {meets} | "
            f"{s['val_rmse']:.4f} | {s['seconds_per_seed']:.0f} | {diag} |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> Path:
    """Each set's RMSE relative to the training-mean predictor's (1 = as good as predicting the mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 2.0 * len(summary)), 4.2))
    for i, s in enumerate(summary):
        ref = s["training_mean"] or 1.0
        ax.scatter([i] * len(s["test_rmse"]), np.array(s["test_rmse"]) / ref, color="tab:blue", s=18, alpha=0.6,
                   zorder=3, label="RNN recipe (one seed)" if i == 0 else None)
        ax.hlines(s["mean"] / ref, i - 0.3, i + 0.3, color="tab:blue", lw=2, zorder=4,
                  label="RNN recipe, mean over seeds" if i == 0 else None)
        if s["dtw"] is not None:
            ax.hlines(s["dtw"] / ref, i - 0.35, i + 0.35, color="tab:red", lw=2, zorder=2,
                      label="1-NN DTW" if i == 0 else None)
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="training mean")
    ax.set_xticks(range(len(summary)), [s["dataset"] for s in summary])
    ax.set(ylabel="test RMSE / training-mean RMSE", title="default recipe vs baselines (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_doc(doc: Path, body: str) -> None:
    write_between(doc, BEGIN, END, body)
