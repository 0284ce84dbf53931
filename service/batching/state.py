"""Recurrent state rows between the scheduler and the streaming graph: each sequence carries one
``[H]`` float32 row per state tensor (``None`` = zero, a new sequence); a model run takes and returns
one ``[B, H]`` matrix per state tensor, row b belonging to the sequence in row b of ``x``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

State = tuple[np.ndarray, ...]


def stack(states: Sequence[State | None], sizes: Sequence[int]) -> tuple[np.ndarray, ...]:
    """One ``[B, H]`` matrix per state tensor from per-sequence rows (zeros where a row is None)."""
    out = []
    for j, size in enumerate(sizes):
        m = np.zeros((len(states), size), dtype=np.float32)
        for i, s in enumerate(states):
            if s is not None:
                m[i] = s[j]
        out.append(m)
    return tuple(out)


def row(states: Sequence[np.ndarray], i: int) -> State:
    """Sequence ``i``'s own copy of its state rows (never a view into a batch matrix)."""
    return tuple(m[i].copy() for m in states)


def nbytes(sizes: Sequence[int]) -> int:
    return 4 * int(sum(sizes))
