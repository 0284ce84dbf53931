"""``rnnserve export`` and ``prepare``: a trained checkpoint, or the user's own module (``--module``), to a
parity-gated bundle in the model store."""

from __future__ import annotations

import time
from pathlib import Path

from .common import DEFAULT_NAME, export_options, name_options, say, train_options
from .train import cmd_train, recipe_options

GATE_OPTIONS = ("atol", "stream_atol", "max_length", "max_batch")


def cmd_export(args) -> int:
    if getattr(args, "module", None):
        return cmd_export_module(args)
    if getattr(args, "onnx", None):
        return cmd_export_onnx(args)
    from rnnserve.export.package import export_bundle
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.pipeline import CHECKPOINT

    args.name = args.name or DEFAULT_NAME
    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(args.workdir) / args.name / CHECKPOINT
    given = {k: getattr(args, k) for k in GATE_OPTIONS if getattr(args, k, None) is not None}
    parity = ParityConfig(**given)
    started = time.perf_counter()
    bundle = export_bundle(checkpoint, args.name, parity, progress=say)
    say(f"stored {bundle.name}:{bundle.version} at {bundle.path} in {time.perf_counter() - started:.0f}s")
    return 0


def load_module_function(spec: str):
    """``FILE.py:FUNCTION`` -> the function, its file run as a module of its own."""
    import importlib.util

    path, sep, function = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not function:
        raise SystemExit(f"[rnnserve] error: --module {spec!r}: expected FILE.py:FUNCTION")
    if not Path(path).is_file():
        raise SystemExit(f"[rnnserve] error: --module {spec!r}: no file {path}")
    module_spec = importlib.util.spec_from_file_location(f"rnnserve_user_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise SystemExit(f"[rnnserve] error: --module {spec!r}: {path} defines no function {function!r}")
    return fn


def cmd_export_module(args) -> int:
    """``rnnserve export --module FILE.py:FUNCTION --name NAME``: FUNCTION returns ``(model, example)`` or
    ``(model, example, options)``; the export is ``export_model``'s."""
    from rnnserve.export import ExportError, export_model

    if not args.name:
        raise SystemExit("[rnnserve] error: --module needs --name NAME (the model's name in the store)")
    made = load_module_function(args.module)()
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise SystemExit(f"[rnnserve] error: {args.module} returned {type(made).__name__}: expected (model, example) "
                         f"or (model, example, options)")
    model, example, options = (*made, {})[:3]
    options = {**{k: getattr(args, k) for k in GATE_OPTIONS if k != "stream_atol" and getattr(args, k) is not None},
               **dict(options)}
    labels = [v for v in args.labels.split(",") if v] if args.labels else options.pop("labels", None)
    started = time.perf_counter()
    try:
        tag = export_model(model, args.name, example, labels=labels, progress=say, **options)
    except ExportError as exc:
        print(f"[rnnserve] error: export refused: {exc}")
        return 2
    say(f"stored {tag} in {time.perf_counter() - started:.0f}s")
    return 0


def cmd_export_onnx(args) -> int:
    """``rnnserve export --onnx FILE --name NAME``: an ONNX RNN graph from elsewhere (self-consistency gate)."""
    from rnnserve.export import ExportError
    from rnnserve.export.onnx_import import import_onnx
    from rnnserve.export.parity import ParityConfig

    if not args.name:
        raise SystemExit("[rnnserve] error: --onnx needs --name NAME (the model's name in the store)")
    if not Path(args.onnx).is_file():
        raise SystemExit(f"[rnnserve] error: --onnx {args.onnx}: no such file")
    given = {k: getattr(args, k) for k in GATE_OPTIONS if getattr(args, k, None) is not None}
    labels = tuple(v for v in args.labels.split(",") if v) if args.labels else ()
    started = time.perf_counter()
    try:
        tag = import_onnx(Path(args.onnx), args.name, input_name=args.input_name, lengths_name=args.lengths_name,
                          output_name=args.output_name, labels=labels, vocab_size=args.vocab_size,
                          config=ParityConfig(**{"max_length": 1000, **given}), say=say)
    except ExportError as exc:
        print(f"[rnnserve] error: export refused: {exc}")
        return 2
    say(f"stored {tag} in {time.perf_counter() - started:.0f}s")
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
    sp = sub.add_parser("export", help="export ONNX + TorchScript, run the parity gate, store the bundle: the "
                        "project's trained checkpoint, or your own PyTorch module with --module")
    name_options(sp)
    export_options(sp)
    sp.add_argument("--module", help="FILE.py:FUNCTION: your own RNN module; FUNCTION() returns (model, example) or "
                    "(model, example, options), example being forward's arguments (x,) or (x, lengths); needs --name")
    sp.add_argument("--onnx", help="FILE.onnx: an ONNX RNN graph from elsewhere (tf2onnx, another exporter), "
                    "checked by a self-consistency gate (no reference framework); needs --name")
    sp.add_argument("--input-name", help="--onnx: the graph's sequence input, where it has several")
    sp.add_argument("--lengths-name", help="--onnx: the graph's lengths input [B], if it takes one")
    sp.add_argument("--output-name", help="--onnx: the output to serve, where the graph has several")
    sp.add_argument("--vocab-size", type=int, help="--onnx: token ids 0..N-1, where no embedding table says it")
    sp.add_argument("--labels", help="a,b,c: class names in output order (a classifier); with --module or --onnx")
    sp.set_defaults(func=cmd_export, name=None)

    sp = sub.add_parser("prepare", help="train + export unless the model store already has the model")
    train_options(sp)
    recipe_options(sp)
    export_options(sp)
    sp.set_defaults(func=cmd_prepare)
