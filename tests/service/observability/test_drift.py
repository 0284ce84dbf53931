import numpy as np
import pytest

from rnnserve.bundle.reference import histogram, reference_stats
from rnnserve.models.data import synthetic
from rnnserve.service.observability.drift import DriftMonitor, psi
from rnnserve.service.settings import DriftSettings


@pytest.fixture(scope="module")
def reference():
    data = synthetic(600, num_features=4, seed=10)
    outputs = np.eye(3)[data.targets]  # a perfect classifier's "logits"
    return reference_stats(data.sequences, outputs, "classification", data.labels, "synthetic")


def window(seed, n=200, shift_feature=None, shift=0.0, length_factor=1):
    data = synthetic(n, num_features=4, seed=seed)
    seqs = []
    for s in data.sequences:
        s = np.repeat(s, length_factor, axis=0).copy()
        if shift_feature is not None:
            s[:, shift_feature] += shift
        seqs.append(s)
    return seqs, data.targets


def evaluate(reference, seqs, preds, **settings):
    monitor = DriftMonitor(reference, DriftSettings(**settings))
    monitor.record(seqs, preds)
    return monitor.evaluate()


def test_psi_is_zero_for_equal_and_grows_with_difference():
    p = np.full(10, 0.1)
    assert psi(p, p) == pytest.approx(0.0)
    q = p.copy()
    q[0], q[1] = 0.2, 0.0
    assert psi(p, q) > 0.1
    assert histogram(np.array([0.0, 1.0, 2.0, 3.0]), [0.5, 2.5]).tolist() == [0.25, 0.5, 0.25]


def test_fresh_in_distribution_traffic_does_not_drift(reference):
    for seed in range(5):
        report = evaluate(reference, *window(100 + seed))
        assert report["ready"] and report["drifted"] == [], report["drifted"]
        assert report["score"] < 1.0


def test_one_shifted_feature_is_the_only_one_flagged(reference):
    std = reference["features"][2]["std"]
    report = evaluate(reference, *window(200, shift_feature=2, shift=0.5 * std))
    assert report["drifted"] == ["feature_2"]
    psis = [f["psi"] for f in report["features"]]
    assert int(np.argmax(psis)) == 2 and report["score"] > 1


def test_length_mix_shift_is_flagged(reference):
    report = evaluate(reference, *window(300, length_factor=2))
    assert "length" in report["drifted"]
    assert report["length"]["median"] >= 1.8 * report["length"]["reference_median"]


def test_prediction_mix_shift_is_flagged(reference):
    seqs, _ = window(400)
    report = evaluate(reference, seqs, np.zeros(len(seqs), dtype=np.int64))  # everything is class 0
    assert "prediction" in report["drifted"]


def test_window_is_bounded_and_no_verdict_before_min_sequences(reference):
    monitor = DriftMonitor(reference, DriftSettings(window_sequences=50, min_sequences=20, steps_per_sequence=4))
    seqs, preds = window(500, n=10)
    monitor.record(seqs, preds)
    assert monitor.evaluate()["ready"] is False
    for seed in range(30):
        monitor.record(*window(600 + seed, n=10))
    steps, weights, lengths, predictions = monitor.snapshot()
    assert len(lengths) == len(steps) == len(predictions) == 50 and monitor.seen == 310
    assert max(len(s) for s in steps) <= 4
    assert monitor.evaluate()["ready"] is True


def test_subsampled_long_sequences_keep_their_weight(reference):
    monitor = DriftMonitor(reference, DriftSettings(steps_per_sequence=4))
    monitor.record([np.zeros((40, 4), np.float32), np.zeros((2, 4), np.float32)], None)
    _, weights, _, _ = monitor.snapshot()
    assert weights[0].sum() == pytest.approx(40) and weights[1].sum() == pytest.approx(2)


def test_token_models_drift_on_the_token_mix_and_per_step_classifiers_on_every_steps_class():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30, int(n)) for n in rng.integers(5, 40, 200)]
    steps = [rng.integers(0, 3, len(s)) for s in seqs]  # one predicted class per step
    reference = reference_stats(seqs, [np.eye(3)[c] for c in steps], "classification", ["a", "b", "c"], "test",
                                vocab_size=30)
    settings = {"min_sequences": 50}
    same = evaluate(reference, seqs, steps, **settings)
    assert same["tokens"]["psi"] < 0.05 and same["prediction"]["psi"] < 0.05 and not same["drifted"]
    shifted = [np.minimum(s + 5, 29) for s in seqs]  # another vocabulary region
    assert "tokens" in evaluate(reference, shifted, steps, **settings)["drifted"]
    assert "prediction" in evaluate(reference, seqs, [np.zeros_like(c) for c in steps], **settings)["drifted"]


def test_a_regressors_predictions_drift_on_their_output_values():
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((int(n), 2)).astype(np.float32) for n in rng.integers(5, 30, 200)]
    outputs = rng.normal(3.0, 1.0, (200, 2))
    reference = reference_stats(seqs, outputs, "regression", [], "test")
    same = evaluate(reference, seqs, [o[None] for o in rng.normal(3.0, 1.0, (200, 2))], min_sequences=50)
    assert same["prediction"]["psi"] < 0.25 and "prediction" not in same["drifted"]  # 0.25: the default threshold
    shifted = evaluate(reference, seqs, [o[None] for o in rng.normal(4.5, 1.0, (200, 2))], min_sequences=50)
    assert "prediction" in shifted["drifted"] and len(shifted["prediction"]["outputs"]) == 2
    assert shifted["prediction"]["outputs"][0]["mean"] > 4.0
