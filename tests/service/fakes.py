"""A stand-in for ``InferenceCore`` that the transports can be tested against in process: the same
interface, a deterministic model (logits = [sum of feature 0, length, 0]; a generation is the prompt
reversed), no bundle, no session."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from rnnserve.bundle.signature import Signature
from rnnserve.service.batching.admission import AdmissionControl
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import ModelNotFound, Unavailable
from rnnserve.service.observability.metrics import MetricsSink, RequestSink
from rnnserve.service.observability.stats import ModelStats
from rnnserve.service.registry import IndexEntry
from rnnserve.service.security import Restrictions
from rnnserve.service.settings import LimitSettings
from rnnserve.service.types import ModelInfo, Prediction

F = 2
INFO = ModelInfo("fake", "7", Signature.for_features(F, 3, ("a", "b", "c")))


def fake_logits(seq: np.ndarray) -> np.ndarray:
    return np.array([seq[:, 0].sum(), len(seq), 0.0], np.float32)


class RecordingMetrics(RequestSink):
    def __init__(self):
        self.ends: list[tuple] = []
        self.errors: list[tuple] = []

    def end(self, transport, endpoint, model, version, status, seconds):
        self.ends.append((transport, endpoint, status))

    def error(self, transport, kind):
        self.errors.append((transport, kind))


class FakeCore:
    def __init__(self, limits: LimitSettings | None = None, queue: int = 64, ready: bool = True,
                 fail: Exception | None = None, delay: float = 0.0) -> None:
        self.info = INFO
        self.limits = limits or LimitSettings(max_length=50, max_sequences_per_request=4, max_body_bytes=4096)
        self.metrics = MetricsSink()
        self.stats = ModelStats(INFO.name, INFO.version)
        self.admission = AdmissionControl(queue)
        self.ready = ready
        self.fail = fail
        self.delay = delay  # seconds each predict takes (on the event loop, cancellable)
        self.cancelled = 0
        self.seen: list[list[np.ndarray]] = []
        self.stream_idle_timeout_s = 60.0
        self.streams: dict = {}  # key -> summed chunks (a fake stream state)

    def record_request(self, ok, seconds):
        self.stats.request(ok, seconds)

    def admit(self):
        if not self.ready:
            raise Unavailable("model is not ready yet (warming up or shutting down)")
        return self.admission.reserve()

    async def predict(self, sequences, ticket=None, sequence=None):
        if self.fail is not None:
            raise self.fail
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.seen.append(list(sequences))
        if sequence is None:
            return Prediction.from_outputs(INFO, np.stack([fake_logits(s) for s in sequences]))
        prefix = np.concatenate([self.streams.get(sequence.key, np.zeros((0, F), np.float32)), sequences[0]])
        self.streams[sequence.key] = prefix
        if sequence.end:
            del self.streams[sequence.key]
        return Prediction.from_rows(INFO, INFO.signature.pack(fake_logits(prefix)[None]), sequence, len(prefix))

    async def generate(self, request, ticket=None, on_piece=None):
        """A fake decode: the prompt reversed, one character per piece."""
        if self.fail is not None:
            raise self.fail
        text = request.text[::-1][: request.sampling.max_tokens]
        for i, c in enumerate(text):
            if on_piece is not None:
                on_piece((c, "length" if i == len(text) - 1 else None))
        return SimpleNamespace(text=text, finish_reason="length")

    async def generate_stream(self, request, ticket=None):
        pieces = []
        await self.generate(request, ticket, pieces.append)
        for piece in pieces:
            yield piece

    async def drift_report(self, refresh=False):
        return {"ready": False, "refreshed": refresh}


def cancel_midway(make_call, after: float = 0.2) -> None:
    """Run the coroutine ``make_call()`` in its own task and cancel it ``after`` seconds in, as a timeout
    or a client that goes away does; the cancellation must come back out of it."""

    async def main():
        task = asyncio.get_running_loop().create_task(make_call())
        await asyncio.sleep(after)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the cancelled call returned instead of raising CancelledError")

    asyncio.run(main())


class FakeRegistry:
    """The registry interface the data plane uses, over one FakeCore; ``plane`` is the data plane over it."""

    def __init__(self, core: FakeCore, repository_api: bool = True, restricted_api: str = "") -> None:
        self.core = core
        self.metrics = RecordingMetrics()
        self.limits = core.limits
        self.repository_api = repository_api
        self.loads: list[tuple] = []
        # what the transports are given; restricted_api: server.restricted_api's syntax
        self.plane = DataPlane(self, self.metrics, restrictions=Restrictions.parse(restricted_api))

    def resolve(self, name, version=None, sequence=None):
        if name != INFO.name or version not in (None, "", INFO.version):
            raise ModelNotFound(f"model {name!r} is not served here", "model")
        return self.core

    def json_model(self, name, version):
        return (name or INFO.name), version

    def versions(self, name):
        return [INFO.version]

    def cores(self, name=None):
        return [self.core] if name in (None, INFO.name) else []

    def served(self):
        return [INFO]

    @property
    def ready(self):
        return self.core.ready

    def index(self):
        return [IndexEntry(INFO.name, INFO.version, "READY")]

    def check_repository_api(self):
        from rnnserve.service.errors import Forbidden

        if not self.repository_api:
            raise Forbidden("the repository API is switched off")

    async def load(self, name, version=None):
        self.loads.append(("load", name, version))
        if name != INFO.name:
            raise ModelNotFound(f"model {name!r} is not in the store", "model")
        return INFO.version

    async def unload(self, name, version=None):
        self.loads.append(("unload", name, version))
        return [INFO.version]
