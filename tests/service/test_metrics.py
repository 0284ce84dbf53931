import numpy as np
import prometheus_client as pc

from service.metrics import LATENCY_BUCKETS, Metrics, NullMetrics, observe_many


def _samples(registry, name):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect() for s in m.samples if s.name.startswith(name)}


def test_observe_many_equals_observe_per_value():
    values = np.random.default_rng(0).lognormal(-4, 2, 500).tolist() + [0.0, 0.001, 10.0, 1e6]
    reg_a, reg_b = pc.CollectorRegistry(), pc.CollectorRegistry()
    a = pc.Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=reg_a)
    b = pc.Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=reg_b)
    for v in values:
        a.observe(v)
    observe_many(b, values)
    sa, sb = _samples(reg_a, "h_"), _samples(reg_b, "h_")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert abs(sa[k] - sb[k]) < 1e-6 * max(1, abs(sa[k])), k


def test_null_metrics_accepts_every_call():
    m = NullMetrics("m", "v")
    m.begin("grpc")
    m.end("grpc", "infer", "OK", 0.1)
    m.batch(sequences=1, requests=1, buckets=1, real=1, computed=1, lengths=[1], waits=[0], stages={})
    m.drift({})
    assert not hasattr(Metrics, "__getattr__")
