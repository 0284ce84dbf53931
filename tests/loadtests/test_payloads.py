"""Payloads shaped by the served model's signature, with the bundle's own length distribution."""

from __future__ import annotations

import numpy as np

from rnnserve.bundle.reference import reference_stats
from rnnserve.loadtests.payloads import datatype, for_signature, reference_lengths


def test_payloads_follow_the_signature():
    tokens = for_signature(50, [{"name": "input", "datatype": "INT64", "shape": [-1, -1]}], 30, np.arange(1, 51))
    assert all(s.dtype == np.int64 and s.ndim == 1 and 0 <= s.min() and s.max() < 30 for s in tokens)
    assert [len(s) for s in tokens] == list(range(1, 51)) and datatype(tokens[0]) == "INT64"
    feats = for_signature(3, [{"name": "input", "datatype": "FP32", "shape": [-1, -1, 4]}], None, np.array([5, 2, 9]))
    assert [s.shape for s in feats] == [(5, 4), (2, 4), (9, 4)] and datatype(feats[0]) == "FP32"


def test_reference_lengths_follow_the_bundles_length_histogram():
    rng = np.random.default_rng(0)
    held_out = [np.zeros((int(n), 2), np.float32) for n in np.concatenate([rng.integers(5, 10, 300),
                                                                           rng.integers(200, 260, 100)])]
    ref = reference_stats(held_out, np.zeros((400, 2)), "regression", [], "test")
    drawn = reference_lengths(ref, 4000, seed=1)
    assert drawn.min() >= 5 and drawn.max() <= 259
    assert abs((drawn < 100).mean() - 0.75) < 0.05  # the two modes in their proportions
