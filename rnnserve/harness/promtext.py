"""Reading a Prometheus text page (``/metrics``) in benchmarks and tests, through prometheus_client's parser,
or the page a server's multiprocess directory would give, read from its files."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample called ``name`` whose labels include ``labels``.

    The parser renames a counter's samples to ``<family>_total``; a counter exposed without that
    suffix (Triton's ``nv_inference_*``) is found by the name it is exposed under as well."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if (s.name == name or (family.type == "counter" and family.name == name and s.name == f"{name}_total"))
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def total(text: str, name: str, **labels: str) -> float:
    """Sum over the matching samples (0 when there is none): a counter over all its label sets."""
    return sum(value for _, value in samples(text, name, **labels))


def page_of(metrics_dir) -> str:
    """The text page of the metrics in a Prometheus multiprocess directory, read from its files: no
    request to the server, whose busy worker may answer ``/metrics`` only after the work being watched."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return generate_latest(registry).decode()
