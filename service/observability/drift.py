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

from rnnserve.bundle.reference import histogram, token_histogram

from ..settings import DriftSettings

EPS = 1e-4  # floor on bin shares so empty bins keep PSI finite
NO_CLASSES = np.empty(0, dtype=np.int64)


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
        # one (sampled rows, length, sampled predictions: class ids or output values, one per sequence or
        # per step) per sequence
        self._window: deque[tuple[np.ndarray, int, np.ndarray]] = deque(maxlen=config.window_sequences)
        self._lock = threading.Lock()
        self.seen = 0
        self.last_report: dict | None = None

    # ---- hot path ------------------------------------------------------------------------------

    def record(self, sequences, predictions) -> None:
        """Whole sequences: their timesteps (feature rows or token ids), lengths and predictions
        (``predictions[i]``: sequence i's class id(s), or its output values ``[k, O]``, one per sequence
        or per step, sampled like the timesteps; None: nothing predicted to record)."""
        k = self.config.steps_per_sequence
        entries = []
        for i, seq in enumerate(sequences):
            n = len(seq)
            stride = -(-n // k)
            rows = np.array(seq[::stride])  # <= k evenly strided rows, copied: no request buffer kept
            classes = NO_CLASSES if predictions is None else _sampled(predictions[i], stride)
            entries.append((rows, n, classes))
        with self._lock:
            self._window.extend(entries)
            self.seen += len(entries)

    def record_chunk(self, chunk: np.ndarray) -> None:
        """A stream chunk's timesteps only: a chunk is not a sequence, so it adds nothing to the
        length or prediction mix (``record_stream_end`` does, once the stream ends)."""
        n = len(chunk)
        rows = np.array(chunk[:: -(-n // self.config.steps_per_sequence)])
        with self._lock:
            self._window.append((rows, -n, NO_CLASSES))  # negative length: timesteps only

    def record_stream_end(self, steps: int, prediction: np.ndarray | None) -> None:
        """An ended stream as one sequence: its total length and its final prediction(s)."""
        classes = NO_CLASSES if prediction is None else _sampled(prediction, 1)
        with self._lock:
            self._window.append((np.empty((0, 0), np.float32), steps, classes))
            self.seen += 1

    # ---- off the hot path ----------------------------------------------------------------------

    def snapshot(self):
        """(sampled rows, weight per row, lengths, predicted class ids) of the current window."""
        with self._lock:
            window = list(self._window)
        steps = [rows for rows, _, _ in window if len(rows)]
        weights = [np.full(len(rows), abs(n) / len(rows)) for rows, n, _ in window if len(rows)]
        lengths = [n for _, n, _ in window if n > 0]
        found = [c for _, _, c in window if len(c)]
        predictions = np.concatenate(found) if found else NO_CLASSES
        return steps, weights, lengths, predictions

    def evaluate(self) -> dict:
        steps, weights, lengths, preds = self.snapshot()
        cfg = self.config
        report = {
            "computed_at": time.time(), "window_sequences": len(lengths), "window_samples": len(steps),
            "sequences_seen": self.seen,
            "thresholds": {"feature": cfg.feature_psi_threshold, "length": cfg.length_psi_threshold,
                           "prediction": cfg.prediction_psi_threshold},
            "ready": len(steps) >= cfg.min_sequences,  # sequences and stream chunks both sample features
        }
        if not report["ready"]:
            report.update(features=[], tokens=None, length=None, prediction=None, score=0.0, drifted=[])
            self.last_report = report
            return report
        x, w = np.concatenate(steps), np.concatenate(weights)
        features, tokens = self._features(x, w), self._tokens(x)
        length = self._length(lengths)  # the length mix needs whole sequences (plain requests, ended streams)
        prediction = self._prediction(preds)
        ratios = {f"feature_{r['feature']}": r["psi"] / cfg.feature_psi_threshold for r in features}
        if tokens is not None:
            ratios["tokens"] = tokens["psi"] / cfg.feature_psi_threshold
        if length is not None:
            ratios["length"] = length["psi"] / cfg.length_psi_threshold
        if prediction is not None:
            ratios["prediction"] = prediction["psi"] / cfg.prediction_psi_threshold
        report.update(
            features=features, tokens=tokens, length=length, prediction=prediction,
            score=max(ratios.values()), drifted=sorted(k for k, v in ratios.items() if v > 1.0),
        )
        self.last_report = report
        return report

    def _features(self, x: np.ndarray, w: np.ndarray) -> list[dict]:
        """PSI and binned KS of each input feature (feature models)."""
        out = []
        for f, fref in enumerate(self.reference["features"]):
            live = histogram(x[:, f], fref["edges"], w)
            expected = np.asarray(fref["proportions"])
            out.append({"feature": f, "psi": psi(expected, live), "ks": binned_ks(expected, live),
                        "mean": float(np.average(x[:, f], weights=w)), "reference_mean": fref["mean"]})
        return out

    def _tokens(self, x: np.ndarray) -> dict | None:
        """PSI of the token-id mix over the reference's most frequent ids and the rest (token models)."""
        tref = self.reference.get("tokens")
        if tref is None:
            return None
        expected = np.append(tref["proportions"], tref["other"])
        live = token_histogram(x, tref)
        return {"psi": psi(expected, live), "proportions": live.tolist()}

    def _length(self, lengths: list[int]) -> dict | None:
        if len(lengths) < self.config.min_sequences:
            return None
        lref = self.reference["length"]
        return {"psi": psi(lref["proportions"], histogram(np.asarray(lengths, float), lref["edges"])),
                "median": float(np.median(lengths)), "reference_median": lref["quantiles"]["0.5"]}

    def _prediction(self, preds: np.ndarray) -> dict | None:
        """PSI of the predicted class mix, or of each regression output against its reference bins
        (the largest is the signal), per sequence or per step for per-step models."""
        pref = self.reference.get("prediction", {})
        if not len(preds):
            return None
        if pref.get("kind") == "class_frequency" and preds.ndim == 1:
            live = np.bincount(preds, minlength=len(pref["proportions"])) / len(preds)
            return {"psi": psi(pref["proportions"], live), "proportions": live.tolist()}
        if pref.get("kind") != "regression" or preds.ndim != 2 or preds.shape[1] != len(pref["outputs"]):
            return None
        outputs = [{"output": j, "psi": psi(ref["proportions"], histogram(preds[:, j], ref["edges"])),
                    "mean": float(preds[:, j].mean()), "reference_mean": ref["mean"]}
                   for j, ref in enumerate(pref["outputs"])]
        return {"psi": max(o["psi"] for o in outputs), "outputs": outputs}


def _sampled(prediction, stride: int) -> np.ndarray:
    """One sequence's predictions, every ``stride``-th row: class ids flat (int64), output values
    ``[k, O]`` (float64)."""
    arr = np.asarray(prediction)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64).reshape(-1)[::stride]
    return arr.astype(np.float64).reshape(-1, arr.shape[-1] if arr.ndim else 1)[::stride]
