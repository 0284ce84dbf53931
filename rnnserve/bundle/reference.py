"""Reference statistics of held-out data, stored in the bundle: what drift monitoring compares
live traffic against. Quantile bin edges come from the reference itself, so each bin holds about
the same share of reference values and PSI is well conditioned."""

from __future__ import annotations

import numpy as np

NUM_BINS = 10


def _edges(values: np.ndarray, bins: int = NUM_BINS) -> list[float]:
    """Interior quantile edges (len <= bins-1, strictly increasing)."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({float(q) for q in qs})


def histogram(values: np.ndarray, edges, weights: np.ndarray | None = None) -> np.ndarray:
    """Share of ``values`` (optionally weighted) in each of the len(edges)+1 bins
    (-inf, e0], (e0, e1], ..., (e_k, inf). The reference and the live drift window both bin here."""
    idx = np.searchsorted(np.asarray(edges), values, side="left")
    counts = np.bincount(idx, weights=weights, minlength=len(edges) + 1).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def _numeric_summary(values: np.ndarray) -> dict:
    edges = _edges(values)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": {str(q): float(np.quantile(values, q)) for q in (0.01, 0.25, 0.5, 0.75, 0.99)},
        "edges": edges,
        "proportions": histogram(values, edges).tolist(),
    }


def reference_stats(
    sequences, outputs: np.ndarray, task: str, labels, source: str
) -> dict:
    """``sequences``: held-out raw [T_i, F] arrays; ``outputs``: the model's raw outputs on them."""
    steps = np.concatenate(sequences, axis=0)
    lengths = np.array([len(s) for s in sequences], dtype=np.float64)
    ref = {
        "source": source,
        "num_sequences": len(sequences),
        "num_timesteps": int(steps.shape[0]),
        "features": [_numeric_summary(steps[:, f].astype(np.float64)) for f in range(steps.shape[1])],
        "length": _numeric_summary(lengths),
    }
    if task == "classification":
        predicted = outputs.argmax(axis=1)
        freq = np.bincount(predicted, minlength=len(labels)) / len(predicted)
        ref["prediction"] = {"kind": "class_frequency", "labels": list(labels), "proportions": freq.tolist()}
    else:
        ref["prediction"] = {
            "kind": "regression",
            "outputs": [_numeric_summary(outputs[:, j].astype(np.float64)) for j in range(outputs.shape[1])],
        }
    return ref
