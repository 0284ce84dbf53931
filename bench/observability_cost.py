"""What metrics and drift recording cost per sequence, in process: the calls the hot path makes, timed
with ``prometheus_client`` in multiprocess mode as in the server (a private temporary directory).

    taskset -c 1 .venv/bin/python -m rnnserve.bench.observability_cost --batch 25

Per request: ``RequestMetrics.begin`` + ``end`` (one sequence per request). Per sequence: one
scheduler iteration's ``Metrics.batch`` of ``--batch`` sequences divided by ``--batch``, and
``DriftMonitor.record`` of one sequence with its prediction (the bundle's own reference and the
default drift settings). Best of ``--rounds`` rounds; compare the total with the server CPU per
sequence of ``rnnserve.bench.serving`` to get the share (docs/BENCHMARKS.md, "Observability overhead")."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit

import numpy as np


def measure(model: str, batch: int, rounds: int, n: int) -> dict:
    """Microseconds per request / per sequence of each part and their total. prometheus_client must not
    be imported yet and ``PROMETHEUS_MULTIPROC_DIR`` must be set (``main`` does both)."""
    from rnnserve.bundle.manifest import load
    from rnnserve.service.batching.plan import IterationStats
    from rnnserve.service.observability.drift import DriftMonitor
    from rnnserve.service.observability.metrics import MetricFamilies, Metrics, RequestMetrics
    from rnnserve.service.settings import DriftSettings

    bundle = load(f"{model}:latest")
    families = MetricFamilies()
    metrics, requests = Metrics(families, model, "1"), RequestMetrics(families)
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.lognormal(np.log(50), 0.8, batch).clip(1, 500)]
    stats = IterationStats(sequences=batch, requests=batch, buckets=3, real=sum(lengths),
                           computed=sum(lengths) + 100, lengths=lengths, waits=[0.01] * batch,
                           stages={"pad": 1e-4, "inference": 1e-3, "unpad": 1e-5}, model_cpu=0.001)
    drift = DriftMonitor(bundle.read_json("reference.json"), DriftSettings())
    seq = rng.standard_normal((lengths[0], bundle.num_features)).astype(np.float32)

    def request() -> None:
        requests.begin("grpc")
        requests.end("grpc", "infer", model, "1", "OK", 0.01)

    def best(fn, number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6

    out = {"request_us": best(request, n),
           "batch_us_per_sequence": best(lambda: metrics.batch(stats), max(1, n // batch)) / batch,
           "drift_us_per_sequence": best(lambda: drift.record([seq], [np.array(3)]), n)}
    out["total_us_per_sequence"] = sum(out.values())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.observability_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--batch", type=int, default=25, help="sequences per scheduler iteration")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=20000)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="rnnserve-metrics-cost-") as metrics_dir:  # removed afterwards
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        out = measure(args.model, args.batch, args.rounds, args.calls)
    for key, value in out.items():
        print(f"{key}: {value:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
