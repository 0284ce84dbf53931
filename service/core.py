"""The inference core of one worker: a verified bundle, its ONNX Runtime session, the adaptive
batcher every transport feeds, and readiness. Transports call ``predict`` and format results."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from export import bundle as bundles
from models.data import pad

from .batcher import Admission, Batcher
from .drift import DriftMonitor
from .errors import ModelNotFound, Unavailable
from .metrics import Metrics, NullMetrics
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("rnnserve.core")
GOLDEN_ATOL = 1e-4  # served outputs vs the eager outputs recorded at export (parity gate: 1e-5)


class InferenceCore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tag = f"{settings.model.name}:{settings.model.version}"
        self.bundle = bundles.load(tag)  # verifies every sha256; raises BundleError
        log.info("loaded bundle %s:%s from %s", self.bundle.name, self.bundle.version, self.bundle.path)
        self.runtime = Runtime(
            self.bundle.onnx_path, settings.runtime.provider, settings.runtime.intra_op_threads,
            settings.runtime.allow_spinning,
        )
        metrics_cls = Metrics if settings.metrics.enabled else NullMetrics
        self.metrics = metrics_cls(self.bundle.name, self.bundle.version)
        self.metrics.loaded(self.runtime.provider)
        self.batcher: Batcher | None = None
        self.drift: DriftMonitor | None = None
        if settings.drift.enabled:
            self.drift = DriftMonitor(self.bundle.read_json("reference.json"), settings.drift)
        self._ready = False

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def self_test(self) -> None:
        """Serve the bundle's golden held-out sequences and compare with the recorded outputs."""
        golden = self.bundle.read_json("golden.json")
        seqs = [np.asarray(s, dtype=np.float32) for s in golden["sequences"]]
        x, lengths = pad(seqs)
        got = self.runtime.run(x, lengths)
        err = float(np.abs(got - np.asarray(golden["outputs"], dtype=np.float32)).max())
        if not err <= GOLDEN_ATOL:
            raise bundles.BundleError(
                f"self-test failed: served outputs differ from the bundle's recorded outputs by {err:.3g}"
            )
        log.info("self-test passed on %d golden sequences (max abs error %.2e)", len(seqs), err)

    def prepare(self) -> None:
        """Blocking warm-up: golden self-test, cost-model calibration, batcher."""
        self.self_test()
        cost = None
        if self.settings.batching.bucketing == "cost":
            cost = self.runtime.calibrate(self.bundle.num_features, self.settings.batching.max_batch_size)
        self.batcher = Batcher(self.runtime.run, self.settings.batching, cost, self.metrics.batch)

    async def warm_up(self, rounds: int = 3) -> None:
        """Drive the batcher (so the dispatcher's cost estimate is trained) and become ready."""
        assert self.batcher is not None, "prepare() first"
        golden = self.bundle.read_json("golden.json")
        seqs = [np.asarray(s, dtype=np.float32) for s in golden["sequences"]]
        for _ in range(rounds):
            await asyncio.gather(*(self.batcher.infer([s]) for s in seqs))
        self._ready = True
        self.metrics.ready(True)
        log.info("warm-up done: ready to serve %s:%s", self.bundle.name, self.bundle.version)

    def shutdown(self) -> None:
        self._ready = False
        self.metrics.ready(False)
        if self.batcher is not None:
            self.batcher.close()

    # ---- inference -------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> None:
        if name != self.bundle.name or version not in (None, "", self.bundle.version):
            shown = f"{name}:{version}" if version else name
            raise ModelNotFound(
                f"model {shown!r} is not served here; this server serves "
                f"{self.bundle.name!r} version {self.bundle.version!r}", "model"
            )

    def _ready_batcher(self) -> Batcher:
        if not self._ready or self.batcher is None:
            raise Unavailable("model is not ready yet (warming up or shutting down)")
        return self.batcher

    def admit(self) -> Admission:
        """A queue slot for an arriving request, taken before its body is read or decoded;
        refuses at once when not ready or at capacity. Use as ``with core.admit() as slot:``."""
        return self._ready_batcher().reserve()

    async def predict(self, sequences: list[np.ndarray], admission: Admission | None = None) -> dict:
        raw = await self._ready_batcher().infer(sequences, admission)
        if self.drift is not None:
            self.drift.record(sequences, raw.argmax(axis=1) if self.bundle.task == "classification" else None)
        return self.postprocess(raw)

    def evaluate_drift(self) -> dict | None:
        """Compute the drift report and export it as gauges (run off the event loop)."""
        if self.drift is None:
            return None
        report = self.drift.evaluate()
        self.metrics.drift(report)
        return report

    def postprocess(self, raw: np.ndarray) -> dict:
        raw = raw.astype(np.float32, copy=False)
        if self.bundle.task != "classification":
            return {"raw": raw, "values": raw}
        shifted = raw - raw.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        labels = self.bundle.labels
        return {
            "raw": raw,
            "probabilities": probs.astype(np.float32),
            "predicted": [labels[i] for i in raw.argmax(axis=1)],
            "labels": labels,
        }

    def v2_metadata(self) -> dict:
        from .codec_v2 import model_metadata

        out = self.bundle.manifest["outputs"][0]["shape"][1]
        return model_metadata(
            self.bundle.name, self.bundle.version, self.bundle.num_features, out,
            self.bundle.task == "classification",
        )
