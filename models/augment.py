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


def stretch_frames(seq: np.ndarray, frames: int, frame: int, fill: np.ndarray) -> np.ndarray:
    """``seq`` [T, F] resampled to ``frames`` frames of ``frame`` steps, frame by frame: each frame (the
    model's recurrent step) is interpolated with its neighbours as a whole, so the steps inside a frame
    keep their order and spacing. The last frame is padded with ``fill`` (the feature means: what the
    served model pads it with) and the result keeps the original's partial last frame length."""
    if frame == 1:
        return stretch(seq, frames)
    t, f = seq.shape
    n = -(-t // frame)
    padded = np.empty((n * frame, f), dtype=np.float32)
    padded[:t], padded[t:] = seq, fill
    out = stretch(padded.reshape(n, frame * f), frames).reshape(frames * frame, f)
    return out[: frames * frame - (n * frame - t)]


def augment_batch(
    sequences: list[np.ndarray],
    rng: np.random.Generator,
    *,
    warp: float,
    scale: float,
    mean: np.ndarray,
    frame: int = 1,
) -> list[np.ndarray]:
    """One stretch factor per batch (equal-length batches stay equal-length, so padding stays
    small), one amplitude factor per sequence, applied about the training data's feature ``mean``.
    With ``frame`` > 1 the stretch is in whole frames (``stretch_frames``)."""
    if warp <= 0 and scale <= 0:
        return sequences
    factor = float(rng.uniform(1 - warp, 1 + warp)) if warp > 0 else 1.0
    out = []
    for seq in sequences:
        if warp > 0:
            frames = -(-len(seq) // frame)
            seq = stretch_frames(seq, max(1, int(round(frames * factor))), frame, mean)
        if scale > 0:
            amp = np.float32(rng.uniform(1 - scale, 1 + scale))
            seq = (seq - mean) * amp + mean
        out.append(seq)
    return out

