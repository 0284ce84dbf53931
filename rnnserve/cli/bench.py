"""``rnnserve bench``: the serving benchmark (``rnnserve.bench.serving``; see docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse


def cmd_bench(args) -> int:
    from rnnserve.bench import serving

    return serving.main(args.bench_args)


def register(sub) -> None:
    sp = sub.add_parser("bench", help="serving benchmark (see docs/BENCHMARKS.md)")
    sp.add_argument("bench_args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)
