"""The padded batch every graph of a bundle takes: ragged sequences right-padded with zeros into one
``x[B, T, ...]`` with ``lengths[B]`` int64. The graphs mask padded steps by ``lengths``, so padding
never changes a result. Training, the parity gates and the server all pad here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad(sequences: Sequence[np.ndarray], max_len: int | None = None,
        dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ragged ``[T_i, ...]`` arrays (``[T_i, F]`` features or ``[T_i]`` token ids) into
    ``x[B, max_len or max T_i, ...]`` of ``dtype`` and ``lengths[B]`` int64."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max()) if max_len is None else max_len
    x = np.zeros((len(sequences), width, *sequences[0].shape[1:]), dtype=dtype)
    for row, s in zip(x, sequences, strict=True):
        row[: len(s)] = s
    return x, lengths
