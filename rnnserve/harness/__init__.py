"""Helpers that tests, benchmarks and load tests share: a launcher for real ``rnnserve serve``
processes on free loopback ports, and a reader for Prometheus text exposition."""
