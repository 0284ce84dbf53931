import inspect

from rnnserve.service.batching.plan import IterationStats
from rnnserve.service.observability.metrics import (
    MetricFamilies,
    Metrics,
    MetricsSink,
    NullMetrics,
    NullRequestMetrics,
    RequestMetrics,
    RequestSink,
)


def _public(cls):
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_metrics_and_null_metrics_have_exactly_their_sink_interfaces():
    sink = _public(MetricsSink)
    assert sink.keys() == {"loaded", "ready", "batch", "drift", "stream_event", "streams_live", "chunk",
                           "streams_limit", "store_streams", "store_round_trip", "store_error", "generation"}
    assert _public(Metrics) == sink and _public(NullMetrics) == sink  # no extra public method, same signatures
    requests = _public(RequestSink)
    assert requests.keys() == {"begin", "end", "error"}
    assert _public(RequestMetrics) == requests and _public(NullRequestMetrics) == requests
    assert not hasattr(NullMetrics(), "observe_anything")  # no catch-all attribute


def test_null_metrics_records_nothing_and_returns_none():
    m = NullMetrics()
    stats = IterationStats(sequences=1, requests=1, buckets=1, real=1, computed=1, lengths=[1], waits=[0.0])
    assert m.batch(stats) is None and NullRequestMetrics().end("grpc", "infer", "m", "1", "OK", 0.1) is None


def test_one_family_set_serves_several_models_and_versions_with_public_api_only():
    import prometheus_client as pc

    families = MetricFamilies()  # once per process: a second set would collide in the registry
    a, b = Metrics(families, "m-a", "v1"), Metrics(families, "m-b", "v7")
    stats = IterationStats(sequences=3, requests=2, buckets=2, real=30, computed=36, lengths=[5, 10, 15],
                           waits=[0.001, 0.002, 0.003], stages={"pad": 0.0001, "inference": 0.01, "unpad": 1e-5},
                           model_cpu=0.25)
    a.batch(stats)
    b.batch(stats)
    b.batch(stats)
    RequestMetrics(families).end("grpc", "infer", "m-b", "v7", "OK", 0.01)
    reg = pc.REGISTRY
    assert reg.get_sample_value("rnnserve_timesteps_total", {"model": "m-a", "version": "v1", "kind": "computed"}) == 36
    assert reg.get_sample_value("rnnserve_sequence_length_count", {"model": "m-b", "version": "v7"}) == 6
    assert reg.get_sample_value("rnnserve_model_cpu_seconds_total", {"model": "m-b", "version": "v7"}) == 0.5
    assert reg.get_sample_value("rnnserve_sequence_length_bucket", {"model": "m-a", "version": "v1", "le": "5.0"}) == 1
    assert reg.get_sample_value("rnnserve_request_duration_seconds_count", {
        "transport": "grpc", "endpoint": "infer", "model": "m-b", "version": "v7", "status": "OK"}) == 1
