"""``rnnserve``: train, search, export, prepare, serve, bench, datasets. Settings are read once, by the
process that uses them."""

from __future__ import annotations

import argparse

from . import bench, export, serve, train
from .common import say


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for module in (train, export, serve, bench):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        from rnnserve.service.startup import settings_error

        say(f"error: {settings_error(exc)}")
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        say(f"error: {exc}")
        return 2


