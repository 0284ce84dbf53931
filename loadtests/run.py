"""``make loadtest``: run Locust headless against a server it starts (or ``--url``), write CSV + HTML
under ``--out``, and check the SLO thresholds in loadtests/slo.yaml. Exit 1 when an SLO is missed.

    .venv/bin/python -m rnnserve.loadtests.run --profile steady --duration 60 --peak-users 32
    .venv/bin/python -m rnnserve.loadtests.run --url http://127.0.0.1:3000 --grpc-target 127.0.0.1:8001
    .venv/bin/python -m rnnserve.loadtests.run --url https://127.0.0.1:3000 --ca-cert ca.crt --header x-api-key=...

``--ca-cert``, ``--client-cert``, ``--client-key`` and ``--header`` (TLS, mutual TLS, restricted API
categories) go to Locust as they are; a server started here takes its TLS and restricted-API settings
from the RNNSERVE_* environment.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

from rnnserve.harness import access as client_access

HERE = Path(__file__).resolve().parent


def read_aggregate(csv_path: Path) -> dict:
    with csv_path.open() as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "Aggregated":
                return row
    raise ValueError(f"no Aggregated row in {csv_path}")


def check_slo(stats: dict, slo: dict) -> list[str]:
    """Missed objectives, as readable lines (empty: all met)."""
    requests, failures = int(stats["Request Count"]), int(stats["Failure Count"])
    error_ratio = failures / requests if requests else 1.0
    checks = [
        ("requests", requests, ">=", slo.get("min_requests", 1)),
        ("p95_ms", float(stats["95%"]), "<=", slo["p95_ms"]),
        ("p99_ms", float(stats["99%"]), "<=", slo["p99_ms"]),
        ("error_ratio", error_ratio, "<=", slo["max_error_ratio"]),
    ]
    missed = []
    for name, value, op, limit in checks:
        ok = value >= limit if op == ">=" else value <= limit
        print(f"  {'ok  ' if ok else 'MISS'} {name}: {value:.4g} (objective {op} {limit})")
        if not ok:
            missed.append(f"{name} {value:.4g} not {op} {limit}")
    return missed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="existing server's HTTP base URL (default: start one)")
    p.add_argument("--grpc-target", help="existing server's gRPC host:port")
    p.add_argument("--model", default="vowels")
    p.add_argument("--profile", choices=["steady", "step", "spike"], default="steady")
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--peak-users", type=int, default=32)
    p.add_argument("--length-mix", choices=["reference", "lognormal", "uniform", "bimodal"], default="reference",
                   help="reference (default): the bundle's own length distribution; or a synthetic mix")
    p.add_argument("--max-length", type=int, default=500)
    p.add_argument("--users", choices=["requests", "streams", "mixed", "generate"], default="requests",
                   help="plain requests over the three transports, live streams, both, or generations "
                        "(generate_stream; the server it starts uses the step policy)")
    p.add_argument("--prompt", default="The ", help="generation prompt (--users generate)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per generation (--users generate)")
    p.add_argument("--chunk-interval", type=float, default=1.0, help="seconds between chunks of one stream")
    p.add_argument("--slo", default="steady", help="section of --slo-file")
    p.add_argument("--slo-file", default=str(HERE / "slo.yaml"))
    p.add_argument("--out", default="results/loadtest")
    client_access.add_arguments(p)
    args = p.parse_args(argv)
    access = client_access.from_args(args)
    slo = yaml.safe_load(Path(args.slo_file).read_text())[args.slo]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    server = None
    if args.url is None:
        from rnnserve.harness.launch import ServerProcess

        settings = {"RNNSERVE_BATCHING__POLICY": "steps"} if args.users == "generate" else None
        server = ServerProcess(args.model, settings, access=access).wait_ready()
        url, grpc_target = server.url, server.grpc_url
    else:
        url, grpc_target = args.url, args.grpc_target or "127.0.0.1:8001"
    try:
        cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--host", url,
               "--grpc-target", grpc_target, "--model-name", args.model, "--load-profile", args.profile,
               "--duration", str(args.duration), "--peak-users", str(args.peak_users),
               "--length-mix", args.length_mix, "--max-length", str(args.max_length),
               "--stream-weight", str(3 if args.users in ("streams", "mixed") else 0),
               *(["--json-weight", "0", "--v2-weight", "0", "--grpc-weight", "0"]
                 if args.users in ("streams", "generate") else []),
               "--generate-weight", str(1 if args.users == "generate" else 0), "--prompt", args.prompt,
               "--max-tokens", str(args.max_tokens),
               "--chunk-interval", str(args.chunk_interval), *client_access.to_args(access),
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--only-summary",
               "--stop-timeout", "10", "--loglevel", "WARNING"]
        print("running:", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, timeout=args.duration + 120)
        print(f"locust exited with {done.returncode}")
    finally:
        if server is not None:
            server.stop()
    if not (out / "locust_stats.csv").exists():
        print(f"locust produced no statistics (exit {done.returncode}); see its output above")
        return 2
    stats = read_aggregate(out / "locust_stats.csv")
    print(f"SLO '{args.slo}' over {stats['Request Count']} requests ({float(stats['Requests/s']):.1f} req/s):")
    missed = check_slo(stats, slo)
    (out / "slo.json").write_text(json.dumps({"slo": slo, "aggregate": stats, "missed": missed}, indent=1))
    if missed:
        print("SLO missed: " + "; ".join(missed))
        return 1
    print("all SLOs met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
