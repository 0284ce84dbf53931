"""The trivial baselines a trained RNN must beat, fit on the same training series the final model saw
and scored on the same test split: 1-nearest-neighbour DTW from aeon
(``KNeighborsTimeSeriesClassifier(distance="dtw")``, full warping window; ``KNeighborsTimeSeriesRegressor``
for regression) and, for regression, predicting the training targets' mean (on some sets it beats
1-NN DTW)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .data import SequenceData


@dataclass(frozen=True)
class Baseline:
    name: str
    metric: str  # accuracy | rmse
    value: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _aeon_input(data: SequenceData):
    """aeon wants [n, channels, time]: one array if every series has the same length, else a list."""
    seqs = [np.ascontiguousarray(s.T, dtype=np.float64) for s in data.sequences]
    if len({s.shape[1] for s in seqs}) == 1:
        return np.stack(seqs)
    return seqs


def dtw_baseline(train: SequenceData, test: SequenceData) -> Baseline:
    started = time.perf_counter()
    if train.task == "classification":
        from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

        model = KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1)
        model.fit(_aeon_input(train), train.targets)
        value = float(np.mean(model.predict(_aeon_input(test)) == test.targets))
        metric = "accuracy"
    else:
        from aeon.regression.distance_based import KNeighborsTimeSeriesRegressor

        if train.targets.shape[1] != 1:
            raise ValueError("the 1-NN DTW baseline handles one regression target, "
                             f"this dataset has {train.targets.shape[1]}")
        model = KNeighborsTimeSeriesRegressor(distance="dtw", n_neighbors=1)
        model.fit(_aeon_input(train), train.targets[:, 0])
        value = math.sqrt(float(np.mean((model.predict(_aeon_input(test)) - test.targets[:, 0]) ** 2)))
        metric = "rmse"
    return Baseline("1-NN DTW", metric, value, time.perf_counter() - started)


def mean_baseline(train: SequenceData, test: SequenceData) -> Baseline:
    """RMSE of predicting every test series the mean of the training targets (over all outputs)."""
    started = time.perf_counter()
    mean = train.targets.astype(np.float64).mean(axis=0)
    value = math.sqrt(float(np.mean((test.targets.astype(np.float64) - mean) ** 2)))
    return Baseline("training mean", "rmse", value, time.perf_counter() - started)


def baselines(train: SequenceData, test: SequenceData) -> list[Baseline]:
    """1-NN DTW (for one target at most), and the training mean for regression."""
    if train.task == "classification":
        return [dtw_baseline(train, test)]
    out = [dtw_baseline(train, test)] if train.targets.shape[1] == 1 else []
    return out + [mean_baseline(train, test)]
