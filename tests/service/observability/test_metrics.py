import inspect

from rnnserve.service.batching.scheduler import IterationStats
from rnnserve.service.observability.metrics import Metrics, MetricsSink, NullMetrics


def _public(cls):
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_metrics_and_null_metrics_have_exactly_the_sink_interface():
    sink = _public(MetricsSink)
    assert sink.keys() == {"loaded", "ready", "batch", "drift", "begin", "end", "error", "stream_event",
                           "streams_live", "chunk", "streams_limit", "store_streams", "store_round_trip",
                           "store_error"}
    assert _public(Metrics) == sink  # no extra public method, same signatures
    assert _public(NullMetrics) == sink
    assert not hasattr(NullMetrics(), "observe_anything")  # no catch-all attribute


def test_null_metrics_records_nothing_and_returns_none():
    m = NullMetrics()
    stats = IterationStats(sequences=1, requests=1, buckets=1, real=1, computed=1, lengths=[1], waits=[0.0])
    assert m.batch(stats) is None and m.begin("grpc") is None and m.end("grpc", "infer", "OK", 0.1) is None


def test_metrics_record_a_batch_with_the_public_client_api():
    import prometheus_client as pc

    m = Metrics("m-test", "v1")
    m.batch(IterationStats(sequences=3, requests=2, buckets=2, real=30, computed=36, lengths=[5, 10, 15],
                           waits=[0.001, 0.002, 0.003], stages={"pad": 0.0001, "inference": 0.01, "unpad": 1e-5}))
    reg = pc.REGISTRY
    assert reg.get_sample_value("rnnserve_timesteps_total", {"model": "m-test", "kind": "computed"}) == 36
    assert reg.get_sample_value("rnnserve_sequence_length_count", {"model": "m-test"}) == 3
    assert reg.get_sample_value("rnnserve_sequence_length_bucket", {"model": "m-test", "le": "5.0"}) == 1
    assert reg.get_sample_value("rnnserve_stage_duration_seconds_count",
                                {"model": "m-test", "stage": "unpad"}) == 1
