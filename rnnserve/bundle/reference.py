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


TOP_TOKENS = 20  # token models: the reference's most frequent ids each get a bin, the rest share one


def reference_stats(
    sequences, outputs, task: str, labels, source: str, vocab_size: int | None = None
) -> dict:
    """``sequences``: held-out raw ``[T_i, F]`` feature arrays (or ``[T_i]`` token ids, with
    ``vocab_size``); ``outputs``: the model's raw outputs on them, ``[B, O]`` per sequence or one
    ``[T_i, O]`` array per sequence for per-step models (every step counts in the prediction mix)."""
    steps = np.concatenate(sequences, axis=0)
    lengths = np.array([len(s) for s in sequences], dtype=np.float64)
    ref = {
        "source": source,
        "num_sequences": len(sequences),
        "num_timesteps": int(steps.shape[0]),
        "length": _numeric_summary(lengths),
    }
    if vocab_size is not None:
        ref["features"] = []
        ref["tokens"] = token_frequencies(steps, vocab_size)
    else:
        ref["features"] = [_numeric_summary(steps[:, f].astype(np.float64)) for f in range(steps.shape[1])]
    rows = np.concatenate([np.asarray(o).reshape(-1, np.asarray(o).shape[-1]) for o in outputs]) \
        if isinstance(outputs, list) else np.asarray(outputs)
    rows = rows.reshape(len(rows), -1)
    if task == "classification":
        freq = np.bincount(rows.argmax(axis=1), minlength=len(labels)) / len(rows)
        ref["prediction"] = {"kind": "class_frequency", "labels": list(labels), "proportions": freq.tolist()}
    else:
        ref["prediction"] = {
            "kind": "regression",
            "outputs": [_numeric_summary(rows[:, j].astype(np.float64)) for j in range(rows.shape[1])],
        }
    return ref


def token_frequencies(ids: np.ndarray, vocab_size: int, top: int = TOP_TOKENS) -> dict:
    """The reference's ``top`` most frequent token ids and their shares, and the share of the rest."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64).reshape(-1), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")[: min(top, vocab_size)]
    total = max(int(counts.sum()), 1)
    return {"vocab_size": vocab_size, "ids": order.tolist(), "proportions": (counts[order] / total).tolist(),
            "other": float(1.0 - counts[order].sum() / total)}


def token_histogram(ids: np.ndarray, reference: dict) -> np.ndarray:
    """Shares of live token ids in the reference's bins (its top ids, then everything else)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    top = np.asarray(reference["ids"], dtype=np.int64)
    counts = (ids[:, None] == top[None, :]).sum(axis=0).astype(np.float64)
    out = np.append(counts, len(ids) - counts.sum())
    return out / out.sum() if len(ids) else out
