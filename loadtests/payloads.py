"""Variable-length payloads (uniform, lognormal, bimodal length mixes, or a bundle's own reference length
distribution) shaped as the served model's signature takes them (float features or token ids), for
load tests and benchmarks."""

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


def for_signature(n: int, inputs: list[dict], vocab_size: int | None, lengths_of: np.ndarray, seed: int = 0
                  ) -> list[np.ndarray]:
    """``n`` sequences of the given lengths shaped as a model's v2 metadata ``inputs`` say: token ids
    ``[T]`` uniform over ``vocab_size`` for an INT64 ``[-1, -1]`` input, else standard normal ``[T, F]``."""
    rng = np.random.default_rng(seed + 1)
    spec = inputs[0]
    if spec["datatype"] in ("INT64", "INT32"):
        if not vocab_size:
            raise ValueError("a token model's payloads need its vocabulary size (model config parameter vocab_size)")
        return [rng.integers(0, vocab_size, int(t)).astype(np.int64) for t in lengths_of[:n]]
    features = int(spec["shape"][2])
    return [rng.standard_normal((int(t), features)).astype(np.float32) for t in lengths_of[:n]]


def reference_lengths(reference: dict, n: int, seed: int = 0, top: int | None = None) -> np.ndarray:
    """``n`` lengths drawn from a bundle's ``reference.json`` length histogram: a bin by its share, then
    uniformly within it (the outer bins end at the reference's min and max)."""
    ref = reference["length"]
    rng = np.random.default_rng(seed)
    bounds = [ref["min"], *ref["edges"], ref["max"]]
    bins = rng.choice(len(ref["proportions"]), size=n, p=np.asarray(ref["proportions"]) / sum(ref["proportions"]))
    lo, hi = np.asarray(bounds[:-1])[bins], np.asarray(bounds[1:])[bins]
    out = np.rint(lo + rng.random(n) * (hi - lo)).astype(np.int64)
    return np.clip(out, 1, top or max(1, int(ref["max"])))


def datatype(seq: np.ndarray) -> str:
    """The v2 datatype a sequence travels as."""
    return "INT64" if seq.dtype.kind in "iu" else "FP32"
