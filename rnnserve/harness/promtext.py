"""Reading a Prometheus text page (``/metrics``) in benchmarks and tests, through prometheus_client's parser."""

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
