"""The training benchmark's report (``bench/training.py`` runs the jobs): per classification set the
recipe's test accuracy over seeds against 1-NN DTW; per regression set its test RMSE against 1-NN
DTW regression and the training-mean predictor, on the same official split. Each as a table between
its markers of docs/BENCHMARKS.md, and a figure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from rnnserve.harness.markdown import write_between

BEGIN, END = "<!-- training:begin -->", "<!-- training:end -->"
REGRESSION_BEGIN, REGRESSION_END = "<!-- training-regression:begin -->", "<!-- training-regression:end -->"


def _command_line(meta: dict) -> str:
    return (f"Command: `{meta['command']}` ({meta['workers']} worker process(es), one torch thread each; "
            f"{meta['wall_seconds'] / 60:.1f} min wall for the whole run on {meta['host']}).")


def _length(s: dict) -> str:
    return f"{s['length'][0]}" if s["length"][0] == s["length"][1] else f"{s['length'][0]}–{s['length'][1]}"


def _diagnoses(s: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} ({v})" for k, v in sorted(s["diagnoses"].items())) or "none"


def _mean_std(values):
    v = np.array([x for x in values if x is not None], dtype=float)
    return float(np.mean(v)), float(np.std(v)), float(np.min(v)), float(np.max(v))


def baseline_of(rows: list[dict], name: str, which: str = "1-NN DTW") -> dict | None:
    """The ``which`` baseline measured for dataset ``name`` (value, seconds), if it ran."""
    found = [b for r in rows if r["kind"] == "baseline" and r["dataset"] == name for b in r["baselines"]]
    return next((b for b in found if b["name"] == which), None)


def summarise(rows: list[dict]) -> list[dict]:
    """One row per classification dataset."""
    out = []
    for name in sorted({r["dataset"] for r in rows if r["kind"] == "rnn" and r["task"] == "classification"}):
        runs = [r for r in rows if r["kind"] == "rnn" and r["dataset"] == name]
        mean, std, lo, hi = _mean_std(r["test_accuracy"] for r in runs)
        codes = Counter(d["code"] for r in runs for d in r["diagnoses"])
        base = baseline_of(rows, name)
        out.append({
            "dataset": name, "n_train": runs[0]["n_train"], "n_test": runs[0]["n_test"],
            "features": runs[0]["features"], "classes": runs[0]["classes"], "length": runs[0]["length"],
            "seeds": [r["seed"] for r in runs], "test_accuracy": [r["test_accuracy"] for r in runs],
            "mean": mean, "std": std, "min": lo, "max": hi,
            "seconds_per_seed": float(sum(r["seconds"] for r in runs) / len(runs)),
            "baseline": None if base is None else base["value"],
            "baseline_seconds": None if base is None else base["seconds"],
            "beats_baseline": None if base is None else mean >= base["value"] - 1e-9,
            "diagnoses": dict(codes), "epochs": runs[0]["config"]["epochs"],
        })
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [
        _command_line(meta),
        "",
        "| dataset | train / test | length | F | classes | 1-NN DTW | RNN test accuracy: mean ± std (min–max) "
        "| ≥ DTW | s / seed | diagnoses (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        base = "–" if s["baseline"] is None else f"{s['baseline']:.3f}"
        beats = "–" if s["beats_baseline"] is None else ("yes" if s["beats_baseline"] else "**no**")
        lines.append(
            f"| {s['dataset']} | {s['n_train']} / {s['n_test']} | {_length(s)} | {s['features']} | {s['classes']} | "
            f"{base} | **{s['mean']:.3f}** ± {s['std']:.3f} ({s['min']:.3f}–{s['max']:.3f}) | {beats} | "
            f"{s['seconds_per_seed']:.0f} | {_diagnoses(s)} |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(summary)), 4.2))
    for i, s in enumerate(summary):
        accs = [a for a in s["test_accuracy"] if a is not None]
        ax.scatter([i] * len(accs), accs, color="tab:blue", s=18, alpha=0.6, zorder=3)
        ax.errorbar(i, s["mean"], yerr=s["std"], fmt="o", color="tab:blue", capsize=4, zorder=4,
                    label="RNN recipe (mean ± std, seeds)" if i == 0 else None)
        if s["baseline"] is not None:
            ax.hlines(s["baseline"], i - 0.35, i + 0.35, color="tab:red", lw=2, zorder=2,
                      label="1-NN DTW" if i == 0 else None)
    ax.set_xticks(range(len(summary)), [s["dataset"] for s in summary], rotation=30, ha="right")
    ax.set(ylabel="test accuracy (official split)", ylim=(0, 1.02), title="default recipe vs 1-NN DTW")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarise_regression(rows: list[dict]) -> list[dict]:
    """One row per regression dataset."""
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


def markdown_regression(summary: list[dict], meta: dict) -> str:
    lines = [
        _command_line(meta),
        "",
        "| dataset | train / test | length | F | 1-NN DTW | training mean | RNN test RMSE: mean ± std (min–max) "
        "| ≤ better baseline | validation RMSE | s / seed | diagnoses (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        dtw = "–" if s["dtw"] is None else f"{s['dtw']:.4f}"
        mean = "–" if s["training_mean"] is None else f"{s['training_mean']:.4f}"
        meets = "–" if s["meets_target"] is None else ("yes" if s["meets_target"] else "**no**")
        lines.append(
            f"| {s['dataset']} | {s['n_train']} / {s['n_test']} | {_length(s)} | {s['features']} | {dtw} | {mean} | "
            f"**{s['mean']:.4f}** ± {s['std']:.4f} ({s['min']:.4f}–{s['max']:.4f}) | {meets} | "
            f"{s['val_rmse']:.4f} | {s['seconds_per_seed']:.0f} | {_diagnoses(s)} |")
    return "\n".join(lines)


def plot_regression(summary: list[dict], path: Path) -> Path:
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


def write_doc(doc: Path, body: str, regression: bool = False) -> None:
    """``body`` between the classification (or regression) table's markers of ``doc``."""
    begin, end = (REGRESSION_BEGIN, REGRESSION_END) if regression else (BEGIN, END)
    write_between(doc, begin, end, body)
