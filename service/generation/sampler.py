"""The sampling rule: the next token from one step's logits, with one ``numpy.random.Generator``
(PCG64, seeded from the request's ``seed``) per request, so a seeded generation is the same whatever
else is batched with it. The rule, in order (a client can reproduce it exactly):

1. ``temperature == 0``: the largest logit (the first of equals); no draw.
2. the logits (float64) divided by ``temperature``, ordered largest first (stable: ties by token id);
3. ``top_k > 0``: only the first ``top_k`` kept;
4. softmax over those kept;
5. ``top_p < 1``: only the shortest head whose probabilities sum to at least ``top_p`` kept, renormalised;
6. one draw ``u = rng.random()``; the token is the first whose cumulative probability exceeds ``u``."""

from __future__ import annotations

import numpy as np


def generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int = 0,
           top_p: float = 1.0) -> int:
    if temperature == 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k:
        order = order[:top_k]
    z = z[order]
    p = np.exp(z - z[0])
    p /= p.sum()
    if top_p < 1.0:
        keep = min(int(np.searchsorted(np.cumsum(p), top_p)) + 1, len(p))
        p = p[:keep] / p[:keep].sum()
    cumulative = np.cumsum(p)
    i = int(np.searchsorted(cumulative, rng.random(), side="right"))
    return int(order[min(i, len(cumulative) - 1)])
