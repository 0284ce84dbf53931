"""The inference core of one worker: a verified bundle, its ONNX Runtime session, the scheduler every
transport feeds, drift monitoring and readiness. Transports call ``admit`` and ``predict`` and hand
the typed ``Prediction`` to a codec."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from rnnserve.export import bundle as bundles

from .batching.admission import Ticket
from .batching.padding import pad_batch
from .batching.scheduler import BucketPolicy, Scheduler
from .errors import ModelNotFound, Unavailable
from .observability.drift import DriftMonitor
from .observability.metrics import Metrics, MetricsSink, NullMetrics
from .runtime.onnx import Runtime
from .settings import LimitSettings, Settings
from .types import ModelInfo, Prediction, with_probabilities

log = logging.getLogger("rnnserve.core")
GOLDEN_ATOL = 1e-4  # served outputs vs the eager outputs recorded at export (parity gate: 1e-5)


def model_info(bundle: bundles.Bundle) -> ModelInfo:
    return ModelInfo(
        name=bundle.name, version=bundle.version, task=bundle.task, num_features=bundle.num_features,
        num_outputs=bundle.num_outputs, labels=bundle.labels,
    )


class InferenceCore:
    def __init__(self, settings: Settings, bundle: bundles.Bundle, runtime: Runtime, metrics: MetricsSink,
                 drift: DriftMonitor | None) -> None:
        self.settings = settings
        self.bundle = bundle
        self.runtime = runtime
        self.metrics = metrics
        self.drift = drift
        self.info = model_info(bundle)
        self.scheduler: Scheduler | None = None
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceCore:
        """Load and verify the bundle named by the settings (raises BundleError) and open its session."""
        tag = f"{settings.model.name}:{settings.model.version}"
        bundle = bundles.load(tag)  # verifies every sha256
        log.info("loaded bundle %s:%s from %s", bundle.name, bundle.version, bundle.path)
        rt = settings.runtime
        runtime = Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name, rt.provider,
                          rt.intra_op_threads, rt.allow_spinning)
        metrics = Metrics(bundle.name, bundle.version) if settings.metrics.enabled else NullMetrics()
        metrics.loaded(runtime.provider)
        drift = DriftMonitor(bundle.read_json("reference.json"), settings.drift) if settings.drift.enabled else None
        return cls(settings, bundle, runtime, metrics, drift)

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def limits(self) -> LimitSettings:
        return self.settings.limits

    def _golden(self) -> tuple[list[np.ndarray], np.ndarray]:
        golden = self.bundle.read_json("golden.json")
        seqs = [np.asarray(s, dtype=np.float32) for s in golden["sequences"]]
        return seqs, np.asarray(golden["outputs"], dtype=np.float32)

    def self_test(self) -> None:
        """Serve the bundle's golden held-out sequences and compare with the recorded outputs."""
        seqs, expected = self._golden()
        got = self.runtime.run(*pad_batch(seqs, self.info.num_features))
        err = float(np.abs(got - expected).max())
        if not err <= GOLDEN_ATOL:
            raise bundles.BundleError(
                f"self-test failed: served outputs differ from the bundle's recorded outputs by {err:.3g}"
            )
        log.info("self-test passed on %d golden sequences (max abs error %.2e)", len(seqs), err)

    def prepare(self) -> None:
        """Blocking start-up work: golden self-test, cost-model calibration, scheduler."""
        self.self_test()
        batching = self.settings.batching
        cost = self.runtime.calibrate(self.info.num_features, batching.max_batch_size)
        buckets = cost if batching.enabled and batching.bucketing == "cost" else None  # None: one FIFO bucket
        policy = BucketPolicy(self._run, self.info.num_features, buckets, batching.max_batch_size,
                              batching.min_bucket_efficiency, per_request=not batching.enabled)
        self.scheduler = Scheduler(policy, batching, cost, self.metrics.batch)

    def _run(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One model run as the scheduler calls it: output rows for ``Prediction.from_rows``."""
        raw = self.runtime.run(x, lengths)
        return with_probabilities(raw) if self.info.classifier else raw

    async def warm_up(self, rounds: int = 3) -> None:
        """Drive the scheduler with the golden sequences (its loop starts, the predicted-wait
        correction is trained) and become ready."""
        assert self.scheduler is not None, "prepare() first"
        seqs, _ = self._golden()
        for _ in range(rounds):
            await asyncio.gather(*(self.scheduler.infer([s]) for s in seqs))
        self._ready = True
        self.metrics.ready(True)
        log.info("warm-up done: ready to serve %s:%s", self.info.name, self.info.version)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop being ready, refuse new work, and finish what was admitted."""
        self._ready = False
        self.metrics.ready(False)
        if self.scheduler is not None:
            await self.scheduler.close(timeout)

    # ---- inference -------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ModelInfo:
        info = self.info
        if name != info.name or version not in (None, "", info.version):
            shown = f"{name}:{version}" if version else name
            raise ModelNotFound(
                f"model {shown!r} is not served here; this server serves {info.name!r} version {info.version!r}",
                "model",
            )
        return info

    def _ready_scheduler(self) -> Scheduler:
        if not self._ready or self.scheduler is None:
            raise Unavailable("model is not ready yet (warming up or shutting down)")
        return self.scheduler

    def admit(self) -> Ticket:
        """A queue slot for an arriving request, taken before its body is read or decoded; refuses
        at once when not ready or at capacity. Use as ``with core.admit() as ticket:``."""
        return self._ready_scheduler().reserve()

    async def predict(self, sequences: list[np.ndarray], ticket: Ticket | None = None) -> Prediction:
        rows = await self._ready_scheduler().infer(sequences, ticket)
        prediction = Prediction.from_rows(self.info, rows)
        if self.drift is not None:
            classes = prediction.outputs.argmax(axis=1) if self.info.classifier else None
            self.drift.record(sequences, classes)
        return prediction

    async def drift_report(self, refresh: bool = False) -> dict | None:
        """The latest drift report (computed now, off the event loop, if asked or none yet)."""
        if self.drift is None:
            return None
        if refresh or self.drift.last_report is None:
            return await asyncio.to_thread(self.evaluate_drift)
        return self.drift.last_report

    def evaluate_drift(self) -> dict | None:
        """Compute the drift report and export it as gauges (run off the event loop)."""
        if self.drift is None:
            return None
        report = self.drift.evaluate()
        self.metrics.drift(report)
        return report
