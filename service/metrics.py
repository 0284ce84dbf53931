"""Prometheus metrics (one naming scheme: ``rnnserve_*``; meanings in docs/OPERATIONS.md).

``prometheus_client`` is imported inside the constructor, never at module import: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` per worker after importing the service module, and a client imported
earlier would run in single-process mode, invisible to ``/metrics``."""

from __future__ import annotations

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    def __init__(self, model: str, version: str) -> None:
        import prometheus_client as pc

        self.model = model
        self.request_duration = pc.Histogram(
            "rnnserve_request_duration_seconds", "End-to-end request latency seen by the server",
            ["transport", "endpoint", "model", "status"], buckets=LATENCY_BUCKETS,
        )
        self.in_flight = pc.Gauge(
            "rnnserve_requests_in_flight", "Prediction requests being processed",
            ["transport"], multiprocess_mode="livesum",
        )
        self.errors = pc.Counter(
            "rnnserve_errors", "Failed prediction requests by error kind", ["transport", "kind"]
        )
        self.stage_duration = pc.Histogram(
            "rnnserve_stage_duration_seconds",
            "Per-stage time: queue_wait (per sequence), pad, inference, unpad (per batch)",
            ["stage", "model"], buckets=LATENCY_BUCKETS,
        )
        self.batch_sequences = pc.Histogram(
            "rnnserve_batch_sequences", "Sequences per adaptive batch", ["model"], buckets=BATCH_BUCKETS
        )
        self.batch_requests = pc.Histogram(
            "rnnserve_batch_requests", "Distinct requests per adaptive batch", ["model"],
            buckets=BATCH_BUCKETS,
        )
        self.batch_buckets = pc.Histogram(
            "rnnserve_batch_buckets", "Length buckets (ONNX Runtime runs) per adaptive batch",
            ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16),
        )
        self.timesteps = pc.Counter(
            "rnnserve_timesteps", "Timesteps: real (sent by clients) and computed (after padding)",
            ["model", "kind"],
        )
        self.sequence_length = pc.Histogram(
            "rnnserve_sequence_length", "Length of each served sequence", ["model"],
            buckets=LENGTH_BUCKETS,
        )
        self.model_info = pc.Gauge(
            "rnnserve_model_info", "Loaded model (value 1) with its version and execution provider",
            ["model", "version", "provider"], multiprocess_mode="max",
        )
        self.model_ready = pc.Gauge(
            "rnnserve_model_ready", "1 once the model is loaded, verified and warmed up",
            ["model"], multiprocess_mode="min",
        )
        self.model_ready.labels(model).set(0)
        self._version = version

    def loaded(self, provider: str) -> None:
        self.model_info.labels(self.model, self._version, provider).set(1)

    def ready(self, value: bool) -> None:
        self.model_ready.labels(self.model).set(1 if value else 0)

    def batch(self, *, sequences, requests, buckets, real, computed, lengths, waits, stages) -> None:
        m = self.model
        self.batch_sequences.labels(m).observe(sequences)
        self.batch_requests.labels(m).observe(requests)
        self.batch_buckets.labels(m).observe(buckets)
        self.timesteps.labels(m, "real").inc(real)
        self.timesteps.labels(m, "computed").inc(computed)
        hist = self.sequence_length.labels(m)
        for n in lengths:
            hist.observe(n)
        wait = self.stage_duration.labels("queue_wait", m)
        for w in waits:
            wait.observe(w)
        for stage, seconds in stages.items():
            self.stage_duration.labels(stage, m).observe(seconds)

    def request(self, transport: str, endpoint: str, status: str, seconds: float) -> None:
        self.request_duration.labels(transport, endpoint, self.model, status).observe(seconds)

    def error(self, transport: str, kind: str) -> None:
        self.errors.labels(transport, kind).inc()
