"""Triton's statistics extension for one served model version (``GET /v2/models/{m}/stats``, gRPC
``ModelStatistics``): what ``tritonclient``'s ``get_inference_statistics`` reads. Counters of this
worker process (with ``server.workers > 1`` each worker answers for itself; Prometheus aggregates
across workers)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..batching.plan import IterationStats


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # sequences answered
    execution_count: int = 0  # model runs
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, dict[str, Duration]] = field(default_factory=dict)  # sequences per iteration
    memory_bytes: int = 0  # resident memory the version took when it was loaded
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self, ok: bool, seconds: float) -> None:
        """One request answered (the transports call this with its end-to-end server time)."""
        with self._lock:
            (self.success if ok else self.fail).add(seconds)
            self.last_inference_ms = int(time.time() * 1000)

    def iteration(self, stats: IterationStats) -> None:
        """One scheduler iteration (called on the observe path)."""
        with self._lock:
            self.inference_count += stats.sequences
            self.execution_count += stats.buckets
            for wait in stats.waits:
                self.queue.add(wait)
            self.compute_input.add(stats.stages.get("pad", 0.0), stats.buckets)
            self.compute_infer.add(stats.stages.get("inference", 0.0), stats.buckets)
            self.compute_output.add(stats.stages.get("unpad", 0.0), stats.buckets)
            size = stats.rows or stats.sequences
            per = self.batches.setdefault(size, {"compute_input": Duration(), "compute_infer": Duration(),
                                                 "compute_output": Duration()})
            per["compute_input"].add(stats.stages.get("pad", 0.0))
            per["compute_infer"].add(stats.stages.get("inference", 0.0))
            per["compute_output"].add(stats.stages.get("unpad", 0.0))

    def to_dict(self) -> dict:
        """Triton's JSON form (one entry of ``model_stats``)."""
        with self._lock:
            return {
                "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: getattr(self, k).to_dict() for k in
                                    ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
                "batch_stats": [{"batch_size": size, **{k: d.to_dict() for k, d in per.items()}}
                                for size, per in sorted(self.batches.items())],
                "memory_usage": [{"type": "CPU", "id": 0, "byte_size": self.memory_bytes}],
            }
