"""Training-time augmentation of ragged ``[T, F]`` sequences: random time stretch (resampling to a
length within ``±warp`` of the original, the invariance 1-NN DTW has by construction) and random
amplitude scaling about each feature's mean. The served model never sees any of this; input noise
is added in the training loop, in units of each feature's standard deviation."""

from __future__ import annotations

import numpy as np


def stretch(seq: np.ndarray, length: int) -> np.ndarray:
    """``seq`` [T, F] linearly resampled to ``length`` steps (first and last step kept)."""
    if length == len(seq):
        return seq
    if len(seq) == 1:
        return np.repeat(seq, length, axis=0)
    src = np.linspace(0.0, len(seq) - 1, length)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, len(seq) - 1)
    w = (src - lo)[:, None].astype(np.float32)
    return (seq[lo] * (1 - w) + seq[hi] * w).astype(np.float32)


def augment_batch(
    sequences: list[np.ndarray],
    rng: np.random.Generator,
    *,
    warp: float,
    scale: float,
    mean: np.ndarray,
) -> list[np.ndarray]:
    """One stretch factor per batch (equal-length batches stay equal-length, so padding stays
    small), one amplitude factor per sequence, applied about the training data's feature ``mean``."""
    if warp <= 0 and scale <= 0:
        return sequences
    factor = float(rng.uniform(1 - warp, 1 + warp)) if warp > 0 else 1.0
    out = []
    for seq in sequences:
        if warp > 0:
            seq = stretch(seq, max(1, int(round(len(seq) * factor))))
        if scale > 0:
            amp = np.float32(rng.uniform(1 - scale, 1 + scale))
            seq = (seq - mean) * amp + mean
        out.append(seq)
    return out

