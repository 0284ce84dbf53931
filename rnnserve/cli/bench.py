"""``rnnserve bench``: the serving benchmark (``rnnserve.bench.serving``; see docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse


def cmd_bench(args) -> int:
    try:
        from rnnserve.bench import serving
    except ImportError:  # the serving wheel (bento, image) leaves the developer tools out
        print("[rnnserve] error: the benchmarks are not installed here (a serving install): run them from a "
              "checkout after `make install`")
        return 2
    return serving.main(args.bench_args)


def register(sub) -> None:
    sp = sub.add_parser("bench", help="serving benchmark (see docs/BENCHMARKS.md)")
    sp.add_argument("bench_args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)
