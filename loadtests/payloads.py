"""Variable-length payloads (uniform, lognormal, bimodal length mixes) for load tests and benchmarks."""

from __future__ import annotations

import numpy as np


def lengths(n: int, mix: str = "lognormal", seed: int = 0, median: int = 50, top: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if mix == "lognormal":
        out = rng.lognormal(np.log(median), 0.8, n)
    elif mix == "uniform":
        out = rng.uniform(1, top, n)
    elif mix == "bimodal":
        out = np.where(rng.random(n) < 0.7, rng.normal(median / 2, median / 8, n), rng.normal(top * 0.8, top / 10, n))
    else:
        raise ValueError(f"unknown length mix {mix!r}: lognormal, uniform or bimodal")
    return np.clip(out.astype(np.int64), 1, top)


def sequences(n: int, num_features: int, mix: str = "lognormal", seed: int = 0, **kw) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return [rng.standard_normal((int(t), num_features)).astype(np.float32) for t in lengths(n, mix, seed, **kw)]
