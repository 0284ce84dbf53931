"""Prometheus metrics (one naming scheme: ``rnnserve_*``; meanings in docs/OPERATIONS.md).

``prometheus_client`` is imported inside the constructor, never at module import: BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` per worker after importing the service module, and a client imported
earlier would run in single-process mode, invisible to ``/metrics``.

Prometheus collectors can be registered once per process, so ``MetricFamilies`` holds them all and
is created once per worker (``service.bento``); several served models and versions each get a
``Metrics`` bound to their ``model`` and ``version`` labels, and the transports record requests
through one ``RequestMetrics``. ``MetricsSink`` / ``RequestSink`` are the interfaces; the ``Null*``
classes (metrics switched off, for overhead measurements) record nothing. Only
``prometheus_client``'s public API is used."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..batching.plan import IterationStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
MV = ["model", "version"]


class MetricsSink:
    """What one served model version records; every method a no-op here (``NullMetrics``)."""

    def loaded(self, provider: str) -> None:
        """The model's session is open on ``provider``."""

    def ready(self, value: bool) -> None:
        """The model became ready (or stopped being ready)."""

    def batch(self, stats: IterationStats) -> None:
        """One scheduler iteration finished."""

    def drift(self, report: dict) -> None:
        """A drift report was computed."""

    def generation(self, started: float, times: list[float], reason: str) -> None:
        """A generation ended (``reason``: length / stop / cancelled / error), having sampled a token at
        each of ``times`` (perf_counter; ``started``: when it was submitted)."""

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


class RequestSink:
    """What the transports record per request (``NullRequestMetrics``: nothing)."""

    def begin(self, transport: str) -> None:
        """A request arrived on ``transport``."""

    def end(self, transport: str, endpoint: str, model: str, version: str, status: str, seconds: float) -> None:
        """A request for ``model`` ``version`` ("" before one is resolved) was answered with ``status``."""

    def error(self, transport: str, kind: str) -> None:
        """A request failed with an error of ``kind``."""


class NullMetrics(MetricsSink):
    """Observability switched off (``RNNSERVE_METRICS__ENABLED=false``): records nothing. Exists so
    the cost of metrics can be measured side by side (bench/serving.py)."""


class NullRequestMetrics(RequestSink):
    """Request metrics switched off."""


class MetricFamilies:
    """Every ``rnnserve_*`` collector, created once per process."""

    def __init__(self) -> None:
        import prometheus_client as pc

        self._requests(pc)
        self._batching(pc)
        self._model(pc)
        self._drift(pc)
        self._streams(pc)
        self._store(pc)
        self._generation(pc)

    def _requests(self, pc) -> None:
        self.request_duration = pc.Histogram(
            "rnnserve_request_duration_seconds", "End-to-end request latency seen by the server",
            ["transport", "endpoint", "model", "version", "status"], buckets=LATENCY_BUCKETS,
        )
        self.in_flight = pc.Gauge(
            "rnnserve_requests_in_flight", "Prediction requests being processed",
            ["transport"], multiprocess_mode="livesum",
        )
        self.errors = pc.Counter(
            "rnnserve_errors", "Failed prediction requests by error kind", ["transport", "kind"]
        )

    def _batching(self, pc) -> None:
        mv = MV
        self.stage_duration = pc.Histogram(
            "rnnserve_stage_duration_seconds",
            "Per-stage time: queue_wait (per sequence); pad, inference, unpad, batch (per iteration)",
            ["stage", *mv], buckets=LATENCY_BUCKETS,
        )
        self.batch_sequences = pc.Histogram(
            "rnnserve_batch_sequences", "Sequences per adaptive batch", mv, buckets=BATCH_BUCKETS
        )
        self.batch_requests = pc.Histogram(
            "rnnserve_batch_requests", "Distinct requests per adaptive batch", mv, buckets=BATCH_BUCKETS,
        )
        self.batch_buckets = pc.Histogram(
            "rnnserve_batch_buckets", "Length buckets (ONNX Runtime runs) per adaptive batch",
            mv, buckets=(1, 2, 3, 4, 6, 8, 12, 16),
        )
        self.timesteps = pc.Counter(
            "rnnserve_timesteps", "Timesteps: real (sent by clients) and computed (after padding)", [*mv, "kind"],
        )
        self.model_cpu = pc.Counter(
            "rnnserve_model_cpu_seconds", "CPU time of the thread running the model (all of the model's CPU "
            "with one ONNX Runtime intra-op thread; its pool threads are not counted)", mv,
        )
        self.sequence_length = pc.Histogram(
            "rnnserve_sequence_length", "Length of each served sequence", mv, buckets=LENGTH_BUCKETS,
        )
        self.iteration_rows = pc.Histogram(
            "rnnserve_iteration_rows", "Active sequences per iteration of the step policy", mv, buckets=BATCH_BUCKETS,
        )
        self.iteration_steps = pc.Histogram(
            "rnnserve_iteration_steps", "Padded timesteps per iteration of the step policy", mv,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )

    def _generation(self, pc) -> None:
        mv = MV
        self.generated_tokens = pc.Counter(
            "rnnserve_generated_tokens", "Tokens sampled by generation requests", mv,
        )
        self.generations = pc.Counter(
            "rnnserve_generations", "Generation requests ended, by finish reason (length, stop, cancelled, error)",
            [*mv, "reason"],
        )
        self.time_to_first_token = pc.Histogram(
            "rnnserve_time_to_first_token_seconds", "From a generation's submission to its first sampled token",
            mv, buckets=LATENCY_BUCKETS,
        )
        self.inter_token = pc.Histogram(
            "rnnserve_inter_token_seconds", "Between consecutive sampled tokens of one generation", mv,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.decode_rows = pc.Histogram(
            "rnnserve_iteration_decode_rows", "Rows feeding back a sampled token per iteration of the step policy",
            mv, buckets=BATCH_BUCKETS,
        )

    def _model(self, pc) -> None:
        mv = MV
        self.model_info = pc.Gauge(
            "rnnserve_model_info", "Loaded model (value 1) with its version and execution provider",
            [*mv, "provider"], multiprocess_mode="max",
        )
        self.model_ready = pc.Gauge(
            "rnnserve_model_ready", "1 once the model version is loaded, verified and warmed up",
            mv, multiprocess_mode="min",
        )

    def _drift(self, pc) -> None:
        mv = MV
        self.drift_psi = pc.Gauge(
            "rnnserve_drift_psi", "PSI of live traffic vs the bundle reference, per signal",
            [*mv, "signal"], multiprocess_mode="livemax",
        )
        self.drift_ks = pc.Gauge(
            "rnnserve_drift_ks", "Binned two-sample KS distance vs the reference, per input feature",
            [*mv, "signal"], multiprocess_mode="livemax",
        )
        self.drift_score = pc.Gauge(
            "rnnserve_drift_score", "Largest PSI / threshold ratio over all signals (> 1 means drift)",
            mv, multiprocess_mode="livemax",
        )
        self.drift_threshold = pc.Gauge(
            "rnnserve_drift_threshold", "PSI threshold per signal kind", [*mv, "kind"], multiprocess_mode="livemax",
        )
        self.drift_window = pc.Gauge(
            "rnnserve_drift_window_sequences", "Sequences in the drift window", mv, multiprocess_mode="livesum",
        )

    def _streams(self, pc) -> None:
        mv = MV
        self.stream_events = pc.Counter(
            "rnnserve_stream_events", "Stream lifecycle: started, restarted, ended, expired, refused (limit)",
            [*mv, "event"],
        )
        self.streams_active = pc.Gauge(
            "rnnserve_streams_active", "Live streams (state held)", mv, multiprocess_mode="livesum",
        )
        self.stream_state = pc.Gauge(
            "rnnserve_stream_state_bytes", "Bytes of recurrent state held for live streams", mv,
            multiprocess_mode="livesum",
        )
        self.streams_max = pc.Gauge(
            "rnnserve_streams_limit", "Configured maximum of live streams (per worker, summed)", mv,
            multiprocess_mode="livesum",
        )
        self.chunk_duration = pc.Histogram(
            "rnnserve_stream_chunk_duration_seconds", "Latency of one stream chunk, its stream's queue included",
            mv, buckets=LATENCY_BUCKETS,
        )

    def _store(self, pc) -> None:
        """The shared stream store (streams.store=redis://...): one count per pipelined round trip."""
        mv = MV
        self.store_live = pc.Gauge(
            "rnnserve_stream_store_streams", "Live streams in the shared stream store (store-wide: take max())",
            mv, multiprocess_mode="livemax",
        )
        self.store_round_trips = pc.Counter(
            "rnnserve_stream_store_round_trips", "Round trips (pipelines) to the shared stream store", mv,
        )
        self.store_operations = pc.Counter(
            "rnnserve_stream_store_operations", "Stream reads and writes carried by those round trips",
            [*mv, "op"],
        )
        self.store_duration = pc.Histogram(
            "rnnserve_stream_store_round_trip_seconds", "Duration of one round trip to the shared stream store",
            mv, buckets=LATENCY_BUCKETS,
        )
        self.store_errors = pc.Counter(
            "rnnserve_stream_store_errors", "Failed round trips to the shared stream store by reason",
            [*mv, "reason"],
        )


class _Children:
    """Labelled children are cached: ``labels()`` costs more than the update on the hot path."""

    def __init__(self) -> None:
        self._children: dict = {}

    def _child(self, metric, *labels):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class RequestMetrics(_Children, RequestSink):
    def __init__(self, families: MetricFamilies) -> None:
        super().__init__()
        self.f = families

    def begin(self, transport: str) -> None:
        self._child(self.f.in_flight, transport).inc()

    def end(self, transport: str, endpoint: str, model: str, version: str, status: str, seconds: float) -> None:
        self._child(self.f.in_flight, transport).dec()
        self._child(self.f.request_duration, transport, endpoint, model, version, status).observe(seconds)

    def error(self, transport: str, kind: str) -> None:
        self._child(self.f.errors, transport, kind).inc()


class Metrics(_Children, MetricsSink):
    """The collectors bound to one served model version."""

    def __init__(self, families: MetricFamilies, model: str, version: str) -> None:
        super().__init__()
        self.f = families
        self.model, self.version = model, version
        self.f.model_ready.labels(model, version).set(0)

    def loaded(self, provider: str) -> None:
        self.f.model_info.labels(self.model, self.version, provider).set(1)

    def ready(self, value: bool) -> None:
        self.f.model_ready.labels(self.model, self.version).set(1 if value else 0)

    def batch(self, stats: IterationStats) -> None:
        f, m, v = self.f, self.model, self.version
        self._child(f.batch_sequences, m, v).observe(stats.sequences)
        self._child(f.batch_requests, m, v).observe(stats.requests)
        self._child(f.batch_buckets, m, v).observe(stats.buckets)
        self._child(f.timesteps, m, v, "real").inc(stats.real)
        self._child(f.timesteps, m, v, "computed").inc(stats.computed)
        self._child(f.model_cpu, m, v).inc(stats.model_cpu)
        length = self._child(f.sequence_length, m, v)
        for value in stats.lengths:
            length.observe(value)
        wait = self._child(f.stage_duration, "queue_wait", m, v)
        for value in stats.waits:
            wait.observe(value)
        for stage, seconds in stats.stages.items():
            self._child(f.stage_duration, stage, m, v).observe(seconds)
        if stats.rows:
            self._child(f.iteration_rows, m, v).observe(stats.rows)
            self._child(f.iteration_steps, m, v).observe(stats.steps)
        if stats.decoding:
            self._child(f.decode_rows, m, v).observe(stats.decoding)

    def generation(self, started: float, times: list[float], reason: str) -> None:
        f, m, v = self.f, self.model, self.version
        self._child(f.generations, m, v, reason).inc()
        if not times:
            return
        self._child(f.generated_tokens, m, v).inc(len(times))
        self._child(f.time_to_first_token, m, v).observe(times[0] - started)
        gaps = self._child(f.inter_token, m, v)
        for a, b in zip(times, times[1:], strict=False):
            gaps.observe(b - a)

    def drift(self, report: dict) -> None:
        f, m, v = self.f, self.model, self.version
        f.drift_window.labels(m, v).set(report["window_sequences"])
        for kind, value in report["thresholds"].items():
            f.drift_threshold.labels(m, v, kind).set(value)
        if not report["ready"]:
            return
        for row in report["features"]:
            signal = f"feature_{row['feature']}"
            f.drift_psi.labels(m, v, signal).set(row["psi"])
            f.drift_ks.labels(m, v, signal).set(row["ks"])
        if report.get("tokens") is not None:
            f.drift_psi.labels(m, v, "tokens").set(report["tokens"]["psi"])
        if report["length"] is not None:
            f.drift_psi.labels(m, v, "length").set(report["length"]["psi"])
        if report["prediction"] is not None:
            f.drift_psi.labels(m, v, "prediction").set(report["prediction"]["psi"])
        f.drift_score.labels(m, v).set(report["score"])

    def stream_event(self, event: str) -> None:
        self._child(self.f.stream_events, self.model, self.version, event).inc()

    def streams_live(self, count: int, state_bytes: int) -> None:
        self._child(self.f.streams_active, self.model, self.version).set(count)
        self._child(self.f.stream_state, self.model, self.version).set(state_bytes)

    def chunk(self, seconds: float) -> None:
        self._child(self.f.chunk_duration, self.model, self.version).observe(seconds)

    def streams_limit(self, limit: int) -> None:
        self._child(self.f.streams_max, self.model, self.version).set(limit)

    def store_streams(self, count: int) -> None:
        self._child(self.f.store_live, self.model, self.version).set(count)

    def store_round_trip(self, reads: int, writes: int, seconds: float) -> None:
        f, m, v = self.f, self.model, self.version
        self._child(f.store_round_trips, m, v).inc()
        if reads:
            self._child(f.store_operations, m, v, "read").inc(reads)
        if writes:
            self._child(f.store_operations, m, v, "write").inc(writes)
        self._child(f.store_duration, m, v).observe(seconds)

    def store_error(self, reason: str) -> None:
        self._child(self.f.store_errors, self.model, self.version, reason).inc()
