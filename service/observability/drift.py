"""Drift monitoring: a sliding window of live traffic compared with the bundle's reference.

Hot path (``record``): one append per sequence of a bounded subsample of its timesteps (at most
``steps_per_sequence``, evenly strided; at evaluation each is weighted by length / samples so long
sequences weigh as much as in the reference), its length and its predicted class. Memory is bounded by
``window_sequences``. Off the hot path (``evaluate``, run on a schedule in a thread): per feature,
the Population Stability Index and a binned two-sample Kolmogorov-Smirnov distance against the
reference's quantile bins; PSI of the length mix and of the prediction mix. A signal drifts when
its PSI exceeds its threshold; the overall score is the largest PSI / threshold ratio (> 1: drift).

Default thresholds come from bench/drift.py on JapaneseVowels windows of 200 sequences: with no
shift, feature PSI stays below 0.05 and length / prediction PSI below 0.12; a 0.5-standard-deviation
shift of one feature gives PSI >= 0.21 in every window.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from rnnserve.bundle.reference import histogram

from ..settings import DriftSettings

EPS = 1e-4  # floor on bin shares so empty bins keep PSI finite


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(np.asarray(expected, dtype=np.float64), EPS, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def binned_ks(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(np.cumsum(expected) - np.cumsum(actual)).max())


class DriftMonitor:
    def __init__(self, reference: dict, config: DriftSettings) -> None:
        self.reference = reference
        self.config = config
        # one (sampled rows, length, predicted class or -1) per sequence
        self._window: deque[tuple[np.ndarray, int, int]] = deque(maxlen=config.window_sequences)
        self._lock = threading.Lock()
        self.seen = 0
        self.last_report: dict | None = None

    # ---- hot path ------------------------------------------------------------------------------

    def record(self, sequences, predictions: np.ndarray | None) -> None:
        """Whole sequences: their timesteps, lengths and predicted classes."""
        k = self.config.steps_per_sequence
        entries = []
        for i, seq in enumerate(sequences):
            n = len(seq)
            rows = np.array(seq[:: -(-n // k)])  # <= k evenly strided rows, copied: no request buffer kept
            entries.append((rows, n, -1 if predictions is None else int(predictions[i])))
        with self._lock:
            self._window.extend(entries)
            self.seen += len(entries)

    def record_chunk(self, chunk: np.ndarray) -> None:
        """A stream chunk's timesteps only: a chunk is not a sequence, so it adds nothing to the
        length or prediction mix (``record_stream_end`` does, once the stream ends)."""
        n = len(chunk)
        rows = np.array(chunk[:: -(-n // self.config.steps_per_sequence)])
        with self._lock:
            self._window.append((rows, -n, -1))  # negative length: timesteps only

    def record_stream_end(self, steps: int, prediction: int | None) -> None:
        """An ended stream as one sequence: its total length and its final predicted class."""
        with self._lock:
            self._window.append((np.empty((0, 0), np.float32), steps, -1 if prediction is None else prediction))
            self.seen += 1

    # ---- off the hot path ----------------------------------------------------------------------

    def snapshot(self):
        """(sampled rows, weight per row, lengths, predictions) of the current window."""
        with self._lock:
            window = list(self._window)
        steps = [rows for rows, _, _ in window if len(rows)]
        weights = [np.full(len(rows), abs(n) / len(rows)) for rows, n, _ in window if len(rows)]
        lengths = [n for _, n, _ in window if n > 0]
        predictions = [p for _, _, p in window if p >= 0]
        return steps, weights, lengths, predictions

    def evaluate(self) -> dict:
        steps, weights, lengths, preds = self.snapshot()
        cfg, ref = self.config, self.reference
        report = {
            "computed_at": time.time(), "window_sequences": len(lengths), "window_samples": len(steps),
            "sequences_seen": self.seen,
            "thresholds": {"feature": cfg.feature_psi_threshold, "length": cfg.length_psi_threshold,
                           "prediction": cfg.prediction_psi_threshold},
            "ready": len(steps) >= cfg.min_sequences,  # sequences and stream chunks both sample features
        }
        if not report["ready"]:
            report.update(features=[], length=None, prediction=None, score=0.0, drifted=[])
            self.last_report = report
            return report
        x = np.concatenate(steps)
        w = np.concatenate(weights)
        features = []
        for f, fref in enumerate(ref["features"]):
            live = histogram(x[:, f], fref["edges"], w)
            expected = np.asarray(fref["proportions"])
            features.append({"feature": f, "psi": psi(expected, live), "ks": binned_ks(expected, live),
                             "mean": float(np.average(x[:, f], weights=w)), "reference_mean": fref["mean"]})
        lref = ref["length"]
        length = None  # the length mix needs whole sequences (plain requests, ended streams)
        if len(lengths) >= cfg.min_sequences:
            length = {"psi": psi(lref["proportions"], histogram(np.asarray(lengths, float), lref["edges"])),
                      "median": float(np.median(lengths)), "reference_median": lref["quantiles"]["0.5"]}
        prediction = None
        pref = ref.get("prediction", {})
        if pref.get("kind") == "class_frequency" and preds:
            live = np.bincount(preds, minlength=len(pref["proportions"])) / len(preds)
            prediction = {"psi": psi(pref["proportions"], live), "proportions": live.tolist()}
        ratios = {f"feature_{r['feature']}": r["psi"] / cfg.feature_psi_threshold for r in features}
        if length is not None:
            ratios["length"] = length["psi"] / cfg.length_psi_threshold
        if prediction is not None:
            ratios["prediction"] = prediction["psi"] / cfg.prediction_psi_threshold
        report.update(
            features=features, length=length, prediction=prediction,
            score=max(ratios.values()), drifted=sorted(k for k, v in ratios.items() if v > 1.0),
        )
        self.last_report = report
        return report
