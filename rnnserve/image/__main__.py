"""``python -m rnnserve.image``: build the serving image (what ``make image`` and ``make image-gpu`` run),
build the local base image, or write the containers.conf that podman needs on this machine type."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .podman import ROOT, PodmanError, containers_conf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.image", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="bento -> OCI image (podman)")
    b.add_argument("--tag", required=True, help="image name, e.g. rnnserve:0.1.0-cpu")
    b.add_argument("--bentofile", type=Path, default=ROOT / "bentofile.yaml")
    b.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the serving wheel is")
    b.add_argument("--models", help="bundles to carry, name[:version],... (default: the bentofile's)")
    b.add_argument("--base", help="base image (default: a local Debian 12 base, built when absent)")
    sub.add_parser("base", help="build the local Debian 12 base image if absent")
    sub.add_parser("conf", help="write the project's containers.conf and print its path")
    args = p.parse_args(argv)
    try:
        if args.command == "conf":
            print(containers_conf())
        elif args.command == "base":
            from .base import ensure_base
            from .podman import Podman

            print(ensure_base(Podman()))
        else:
            from .build import build_image

            models = [m for m in (args.models or "").split(",") if m] or None
            built = build_image(args.tag, args.bentofile, args.dist, models, args.base)
            print(f"[image] {built.tag}: {built.size / 1e6:.0f} MB, bento {built.bento}, models "
                  + ", ".join(f"{n}:{v}" for n, v in built.models))
            print(f"[image] run: podman run --rm -p 3000:3000 -p 8001:8001 --read-only {built.tag}")
    except (PodmanError, RuntimeError, FileNotFoundError, PermissionError) as exc:
        print(f"[image] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
