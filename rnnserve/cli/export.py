"""``rnnserve export`` and ``prepare``: checkpoint -> parity-gated bundle in the model store."""

from __future__ import annotations

import time
from pathlib import Path

from .common import export_options, name_options, say, train_options
from .train import cmd_train, recipe_options


def cmd_export(args) -> int:
    from rnnserve.export.package import export_bundle
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.pipeline import CHECKPOINT

    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(args.workdir) / args.name / CHECKPOINT
    parity = ParityConfig(atol=args.atol, stream_atol=args.stream_atol, max_length=args.max_length,
                          max_batch=args.max_batch)
    started = time.perf_counter()
    bundle = export_bundle(checkpoint, args.name, parity, progress=say)
    say(f"stored {bundle.name}:{bundle.version} at {bundle.path} in {time.perf_counter() - started:.0f}s")
    return 0


def _in_store(name: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(f"{name}:latest")
        return True
    except NotFound:
        return False


def cmd_prepare(args) -> int:
    """Train and export the model unless the store already has it (used by `make serve`)."""
    if _in_store(args.name):
        say(f"{args.name}:latest is already in the BentoML model store")
        return 0
    status = cmd_train(args)
    return status if status else cmd_export(args)


def register(sub) -> None:
    sp = sub.add_parser("export", help="export ONNX + TorchScript, run the parity gate, store the bundle")
    name_options(sp)
    export_options(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("prepare", help="train + export unless the model store already has the model")
    train_options(sp)
    recipe_options(sp)
    export_options(sp)
    sp.set_defaults(func=cmd_prepare)
