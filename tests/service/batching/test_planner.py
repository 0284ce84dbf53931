import numpy as np

from rnnserve.service.batching.planner import padding_efficiency, plan
from rnnserve.service.runtime.cost import CostModel

# Measured on this machine for LSTM(128)x2 (service log "cost model"): per-call, per-step, per-row-step.
COST = CostModel(fixed=60e-6, per_step=4.9e-6, per_row_step=2.0e-6)


def lognormal_lengths(n, seed, median=50, top=500):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), 0.8, n).astype(np.int64), 1, top)


def test_every_sequence_is_planned_exactly_once():
    for seed in range(20):
        lengths = lognormal_lengths(int(np.random.default_rng(seed).integers(1, 200)), seed)
        buckets = plan(lengths, COST, max_rows=64)
        flat = np.concatenate(buckets)
        assert sorted(flat.tolist()) == list(range(len(lengths)))
        assert all(len(b) <= 64 for b in buckets)


def test_buckets_are_length_contiguous():
    lengths = lognormal_lengths(64, 1)
    buckets = plan(lengths, COST, max_rows=64)
    maxima = [lengths[b].max() for b in buckets]
    minima = [lengths[b].min() for b in buckets]
    assert all(maxima[i] <= minima[i + 1] for i in range(len(buckets) - 1))


def test_lognormal_mix_keeps_padding_efficiency_high():
    effs = []
    for seed in range(10):
        lengths = lognormal_lengths(64, seed)
        unconstrained = padding_efficiency(lengths, plan(lengths, COST, max_rows=64))
        real, computed = padding_efficiency(lengths, plan(lengths, COST, max_rows=64, min_efficiency=0.85))
        effs.append(real / computed)
        assert real / computed >= 0.85 and computed <= unconstrained[1]
    fifo_real, fifo_computed = padding_efficiency(lengths, plan(lengths, None, max_rows=64))
    assert min(effs) >= 0.85
    assert fifo_real / fifo_computed < 0.5  # one padded batch wastes most of the work


def test_plan_beats_fifo_under_the_cost_model():
    lengths = lognormal_lengths(64, 7)

    def predicted(buckets):
        return sum(COST.cost(len(b), lengths[b].max()) for b in buckets)

    assert predicted(plan(lengths, COST, 64)) < 0.5 * predicted(plan(lengths, None, 64))


def test_no_bucketing_keeps_arrival_order_and_splits_at_max_rows():
    buckets = plan(np.array([5, 1, 9, 3, 2]), None, max_rows=2)
    assert [b.tolist() for b in buckets] == [[0, 1], [2, 3], [4]]
    assert plan(np.array([], dtype=np.int64), COST, 8) == []


def test_equal_lengths_form_one_bucket():
    assert len(plan(np.full(64, 30), COST, 64)) == 1


def test_efficiency_floor_holds_per_bucket():
    lengths = lognormal_lengths(64, 3)
    for bucket in plan(lengths, COST, 64, min_efficiency=0.9):
        assert lengths[bucket].sum() / (len(bucket) * lengths[bucket].max()) >= 0.9


def reference_plan(lengths, cost, max_rows, min_efficiency):
    """The DP written out in plain Python, one candidate bucket at a time: the planner's band form
    must choose exactly these buckets (ties: the earliest start)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sl = [float(lengths[i]) for i in order]
    best, cut = [0.0] + [float("inf")] * len(sl), [0] * (len(sl) + 1)
    for end in range(1, len(sl) + 1):
        for start in range(max(0, end - max_rows), end):
            rows, pad = end - start, sl[end - 1]
            if sum(sl[start:end]) / (rows * pad) < min_efficiency - 1e-12:
                continue
            total = best[start] + cost.cost(rows, pad)
            if total < best[end]:
                best[end], cut[end] = total, start
    buckets, end = [], len(sl)
    while end > 0:
        buckets.append(order[cut[end]:end])
        end = cut[end]
    return buckets[::-1]


def test_the_plan_is_the_dynamic_programme_s_optimum():
    rng = np.random.default_rng(7)
    costs = [CostModel(1e-4, 2e-6, 3e-7), CostModel(5e-3, 1e-7, 1e-8), CostModel(1e-9, 1e-9, 1e-6)]
    for trial in range(300):
        n, max_rows = int(rng.integers(1, 90)), int(rng.integers(1, 70))
        lengths = np.maximum(1, rng.lognormal(3.9, 0.8, n)).astype(np.int64)
        cost, floor = costs[trial % 3], float(rng.choice([0.0, 0.6, 0.9]))
        got = [b.tolist() for b in plan(lengths, cost, max_rows, floor)]
        want = reference_plan(lengths.tolist(), cost, max_rows, floor)
        assert [sorted(b) for b in got] == [sorted(b) for b in want], (trial, n, max_rows, floor)
