"""Length-aware batch planning: split one adaptive batch into length buckets.

Sequences are sorted by length and cut into contiguous buckets by dynamic programming that
minimises the predicted run time under the measured cost model (``runtime.cost.CostModel``): a bucket
costs a fixed overhead plus, per padded timestep, a per-step and a per-row term. Few large buckets
waste padded timesteps; many small ones pay the per-call and per-step overhead again. The DP finds
the optimum for the batch at hand in O(n * max_rows) vectorised work (n <= max_batch_size).

``min_efficiency`` bounds every bucket's padding efficiency (real / computed timesteps) from below,
which bounds the whole plan's too: the cost model alone may accept more padding when per-step
overhead dominates, and a floor keeps compute proportional to the data on any hardware.
"""

from __future__ import annotations

import numpy as np

from ..runtime.cost import CostModel


def plan(
    lengths: np.ndarray, cost: CostModel | None, max_rows: int, min_efficiency: float = 0.0
) -> list[np.ndarray]:
    """Return buckets as arrays of indices into ``lengths``; every index appears exactly once.
    ``cost=None`` means no bucketing: one bucket in arrival order (FIFO baseline)."""
    n = len(lengths)
    if n == 0:
        return []
    if cost is None:
        return [np.arange(start, min(start + max_rows, n)) for start in range(0, n, max_rows)]
    order = np.argsort(lengths, kind="stable")
    sorted_len = lengths[order].astype(np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(sorted_len)])
    # Every candidate bucket sorted[start:end] at once, as a band: row end-1, column c for start =
    # end - width + c (ascending, as the loop scans them); its cost, or inf where it does not exist
    # or is below the efficiency floor. The loop below is then one add and one argmin per end.
    width = min(max_rows, n)
    ends = np.arange(1, n + 1)[:, None]
    starts = ends - width + np.arange(width)[None, :]
    rows = ends - starts
    steps = sorted_len[ends - 1]
    exists = starts >= 0
    starts = np.where(exists, starts, 0)
    band = cost.cost(rows, steps)
    efficiency = (prefix[ends] - prefix[starts]) / (rows * steps)
    band[~exists | (efficiency < min_efficiency - 1e-12)] = np.inf  # a one-row bucket is always 1.0
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):  # bucket = sorted[start:end], padded to sorted_len[end-1]
        first = max(0, width - end)  # the columns whose start is >= 0
        total = best[end - width + first : end] + band[end - 1, first:]
        k = int(total.argmin())
        best[end], cut[end] = total[k], end - width + first + k
    buckets = []
    end = n
    while end > 0:
        buckets.append(order[cut[end] : end])
        end = int(cut[end])
    return buckets[::-1]


def padding_efficiency(lengths: np.ndarray, buckets: list[np.ndarray]) -> tuple[int, int]:
    """(real timesteps, computed timesteps) for a plan."""
    real = int(lengths.sum())
    computed = int(sum(len(b) * int(lengths[b].max()) for b in buckets))
    return real, computed
