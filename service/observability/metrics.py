"""Prometheus metrics (one naming scheme: ``rnnserve_*``; meanings in docs/OPERATIONS.md).

``prometheus_client`` is imported inside the constructor, never at module import: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` per worker after importing the service module, and a client imported
earlier would run in single-process mode, invisible to ``/metrics``.

``MetricsSink`` is the interface the core and the transports call; ``Metrics`` records to Prometheus
and ``NullMetrics`` (metrics switched off, for overhead measurements) records nothing. Only
``prometheus_client``'s public API is used."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..batching.scheduler import IterationStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class MetricsSink:
    """What the core and the transports record; every method a no-op here (``NullMetrics``)."""

    def loaded(self, provider: str) -> None:
        """The model's session is open on ``provider``."""

    def ready(self, value: bool) -> None:
        """The model became ready (or stopped being ready)."""

    def batch(self, stats: IterationStats) -> None:
        """One scheduler iteration finished."""

    def drift(self, report: dict) -> None:
        """A drift report was computed."""

    def begin(self, transport: str) -> None:
        """A request arrived on ``transport``."""

    def end(self, transport: str, endpoint: str, status: str, seconds: float) -> None:
        """A request was answered with ``status`` after ``seconds``."""

    def error(self, transport: str, kind: str) -> None:
        """A request failed with an error of ``kind``."""

    def stream_event(self, event: str) -> None:
        """A stream started / restarted / ended / expired, or a START was refused."""

    def streams_live(self, count: int, state_bytes: int) -> None:
        """Streams held now and the bytes of their state."""

    def chunk(self, seconds: float) -> None:
        """One stream chunk answered after ``seconds`` (queueing for its stream included)."""

    def streams_limit(self, limit: int) -> None:
        """The configured maximum of live streams."""

    def store_streams(self, count: int) -> None:
        """Live streams in the shared stream store, as this worker last saw it."""

    def store_round_trip(self, reads: int, writes: int, seconds: float) -> None:
        """One round trip to the shared stream store carrying ``reads`` reads and ``writes`` writes."""

    def store_error(self, reason: str) -> None:
        """A round trip to the shared stream store failed (timeout / unreachable / loading / error)."""


class NullMetrics(MetricsSink):
    """Observability switched off (``RNNSERVE_METRICS__ENABLED=false``): records nothing. Exists so
    the cost of metrics can be measured side by side (bench/serving.py)."""


class Metrics(MetricsSink):
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
            "Per-stage time: queue_wait (per sequence); pad, inference, unpad, batch (per iteration)",
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
        self._children: dict = {}
        self.drift_psi = pc.Gauge(
            "rnnserve_drift_psi", "PSI of live traffic vs the bundle reference, per signal",
            ["model", "signal"], multiprocess_mode="livemax",
        )
        self.drift_ks = pc.Gauge(
            "rnnserve_drift_ks", "Binned two-sample KS distance vs the reference, per input feature",
            ["model", "signal"], multiprocess_mode="livemax",
        )
        self.drift_score = pc.Gauge(
            "rnnserve_drift_score", "Largest PSI / threshold ratio over all signals (> 1 means drift)",
            ["model"], multiprocess_mode="livemax",
        )
        self.drift_threshold = pc.Gauge(
            "rnnserve_drift_threshold", "PSI threshold per signal kind", ["model", "kind"],
            multiprocess_mode="livemax",
        )
        self.iteration_rows = pc.Histogram(
            "rnnserve_iteration_rows", "Active sequences per iteration of the step engine", ["model"],
            buckets=BATCH_BUCKETS,
        )
        self.iteration_steps = pc.Histogram(
            "rnnserve_iteration_steps", "Padded timesteps per iteration of the step engine", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.stream_events = pc.Counter(
            "rnnserve_stream_events", "Stream lifecycle: started, restarted, ended, expired, refused (limit)",
            ["model", "event"],
        )
        self.streams_active = pc.Gauge(
            "rnnserve_streams_active", "Live streams (state held)", ["model"], multiprocess_mode="livesum",
        )
        self.stream_state = pc.Gauge(
            "rnnserve_stream_state_bytes", "Bytes of recurrent state held for live streams", ["model"],
            multiprocess_mode="livesum",
        )
        self.streams_max = pc.Gauge(
            "rnnserve_streams_limit", "Configured maximum of live streams (per worker, summed)", ["model"],
            multiprocess_mode="livesum",
        )
        self.chunk_duration = pc.Histogram(
            "rnnserve_stream_chunk_duration_seconds", "Latency of one stream chunk, its stream's queue included",
            ["model"], buckets=LATENCY_BUCKETS,
        )
        # the shared stream store (streams.store=redis://...): one count per pipelined round trip
        self.store_live = pc.Gauge(
            "rnnserve_stream_store_streams", "Live streams in the shared stream store (store-wide: take max())",
            ["model"], multiprocess_mode="livemax",
        )
        self.store_round_trips = pc.Counter(
            "rnnserve_stream_store_round_trips", "Round trips (pipelines) to the shared stream store", ["model"],
        )
        self.store_operations = pc.Counter(
            "rnnserve_stream_store_operations", "Stream reads and writes carried by those round trips",
            ["model", "op"],
        )
        self.store_duration = pc.Histogram(
            "rnnserve_stream_store_round_trip_seconds", "Duration of one round trip to the shared stream store",
            ["model"], buckets=LATENCY_BUCKETS,
        )
        self.store_errors = pc.Counter(
            "rnnserve_stream_store_errors", "Failed round trips to the shared stream store by reason",
            ["model", "reason"],
        )
        self.drift_window = pc.Gauge(
            "rnnserve_drift_window_sequences", "Sequences in the drift window", ["model"],
            multiprocess_mode="livesum",
        )
        self._version = version

    def loaded(self, provider: str) -> None:
        self.model_info.labels(self.model, self._version, provider).set(1)

    def ready(self, value: bool) -> None:
        self.model_ready.labels(self.model).set(1 if value else 0)

    def _child(self, metric, *labels):
        """Labelled children are cached: ``labels()`` costs more than the update on the hot path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def batch(self, stats: IterationStats) -> None:
        m = self.model
        self._child(self.batch_sequences, m).observe(stats.sequences)
        self._child(self.batch_requests, m).observe(stats.requests)
        self._child(self.batch_buckets, m).observe(stats.buckets)
        self._child(self.timesteps, m, "real").inc(stats.real)
        self._child(self.timesteps, m, "computed").inc(stats.computed)
        length = self._child(self.sequence_length, m)
        for value in stats.lengths:
            length.observe(value)
        wait = self._child(self.stage_duration, "queue_wait", m)
        for value in stats.waits:
            wait.observe(value)
        for stage, seconds in stats.stages.items():
            self._child(self.stage_duration, stage, m).observe(seconds)
        if stats.rows:
            self._child(self.iteration_rows, m).observe(stats.rows)
            self._child(self.iteration_steps, m).observe(stats.steps)

    def drift(self, report: dict) -> None:
        m = self.model
        self.drift_window.labels(m).set(report["window_sequences"])
        for kind, value in report["thresholds"].items():
            self.drift_threshold.labels(m, kind).set(value)
        if not report["ready"]:
            return
        for row in report["features"]:
            signal = f"feature_{row['feature']}"
            self.drift_psi.labels(m, signal).set(row["psi"])
            self.drift_ks.labels(m, signal).set(row["ks"])
        if report["length"] is not None:
            self.drift_psi.labels(m, "length").set(report["length"]["psi"])
        if report["prediction"] is not None:
            self.drift_psi.labels(m, "prediction").set(report["prediction"]["psi"])
        self.drift_score.labels(m).set(report["score"])

    def begin(self, transport: str) -> None:
        self._child(self.in_flight, transport).inc()

    def end(self, transport: str, endpoint: str, status: str, seconds: float) -> None:
        self._child(self.in_flight, transport).dec()
        self._child(self.request_duration, transport, endpoint, self.model, status).observe(seconds)

    def error(self, transport: str, kind: str) -> None:
        self._child(self.errors, transport, kind).inc()

    def stream_event(self, event: str) -> None:
        self._child(self.stream_events, self.model, event).inc()

    def streams_live(self, count: int, state_bytes: int) -> None:
        self._child(self.streams_active, self.model).set(count)
        self._child(self.stream_state, self.model).set(state_bytes)

    def chunk(self, seconds: float) -> None:
        self._child(self.chunk_duration, self.model).observe(seconds)

    def streams_limit(self, limit: int) -> None:
        self._child(self.streams_max, self.model).set(limit)

    def store_streams(self, count: int) -> None:
        self._child(self.store_live, self.model).set(count)

    def store_round_trip(self, reads: int, writes: int, seconds: float) -> None:
        m = self.model
        self._child(self.store_round_trips, m).inc()
        if reads:
            self._child(self.store_operations, m, "read").inc(reads)
        if writes:
            self._child(self.store_operations, m, "write").inc(writes)
        self._child(self.store_duration, m).observe(seconds)

    def store_error(self, reason: str) -> None:
        self._child(self.store_errors, self.model, reason).inc()
