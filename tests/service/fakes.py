"""A stand-in for ``InferenceCore`` that the transports can be tested against in process: the same
interface, a deterministic model (logits = [sum of feature 0, length, 0]), no bundle, no session."""

from __future__ import annotations

import numpy as np

from rnnserve.service.batching.admission import AdmissionControl
from rnnserve.service.errors import ModelNotFound, Unavailable
from rnnserve.service.observability.metrics import MetricsSink
from rnnserve.service.settings import LimitSettings
from rnnserve.service.types import ModelInfo, Prediction

F = 2
INFO = ModelInfo("fake", "7", "classification", F, 3, ("a", "b", "c"))


def fake_logits(seq: np.ndarray) -> np.ndarray:
    return np.array([seq[:, 0].sum(), len(seq), 0.0], np.float32)


def _parts(logits):
    p = Prediction.from_outputs(INFO, logits[None])
    return p.outputs, p.probabilities, p.labels


class RecordingMetrics(MetricsSink):
    def __init__(self):
        self.ends: list[tuple] = []
        self.errors: list[tuple] = []

    def end(self, transport, endpoint, status, seconds):
        self.ends.append((transport, endpoint, status))

    def error(self, transport, kind):
        self.errors.append((transport, kind))


class FakeCore:
    def __init__(self, limits: LimitSettings | None = None, queue: int = 64, ready: bool = True,
                 fail: Exception | None = None) -> None:
        self.info = INFO
        self.limits = limits or LimitSettings(max_length=50, max_sequences_per_request=4, max_body_bytes=4096)
        self.metrics = RecordingMetrics()
        self.admission = AdmissionControl(queue)
        self.ready = ready
        self.fail = fail
        self.seen: list[list[np.ndarray]] = []
        self.max_id_length = 256
        self.stream_idle_timeout_s = 60.0
        self.streams: dict = {}  # key -> summed chunks (a fake stream state)

    def resolve(self, name, version=None):
        if name != INFO.name or version not in (None, "", INFO.version):
            raise ModelNotFound(f"model {name!r} is not served here", "model")
        return INFO

    def admit(self):
        if not self.ready:
            raise Unavailable("model is not ready yet (warming up or shutting down)")
        return self.admission.reserve()

    async def predict(self, sequences, ticket=None, sequence=None):
        if self.fail is not None:
            raise self.fail
        self.seen.append(list(sequences))
        if sequence is None:
            return Prediction.from_outputs(INFO, np.stack([fake_logits(s) for s in sequences]))
        prefix = np.concatenate([self.streams.get(sequence.key, np.zeros((0, F), np.float32)), sequences[0]])
        self.streams[sequence.key] = prefix
        if sequence.end:
            del self.streams[sequence.key]
        return Prediction.from_outputs(INFO, fake_logits(prefix)[None]).__class__(
            INFO, *_parts(fake_logits(prefix)), sequence=sequence, steps=len(prefix))

    async def drift_report(self, refresh=False):
        return {"ready": False, "refreshed": refresh}
