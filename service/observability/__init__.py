"""Observability: Prometheus metrics per stage and drift monitoring against the bundle's reference."""
