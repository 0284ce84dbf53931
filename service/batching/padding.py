"""Right-padding ragged ``[T_i, F]`` float32 sequences into one ``x[B, T, F]`` batch (zeros after each
row's length) with ``lengths[B]``: the graph masks padded steps by ``lengths``, so padding never
changes a result."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(sequences: Sequence[np.ndarray], num_features: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((s.shape[0] for s in sequences), dtype=np.int64, count=len(sequences))
    x = np.zeros((len(sequences), int(lengths.max()), num_features), dtype=np.float32)
    for row, seq in zip(x, sequences, strict=True):
        row[: seq.shape[0]] = seq
    return x, lengths
