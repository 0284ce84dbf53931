"""``rnnserve``: train, search, export, prepare, serve, bench. Settings are read here, once."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_DATASET = "JapaneseVowels"
DEFAULT_NAME = "vowels"


def _say(msg: str) -> None:
    print(f"[rnnserve] {msg}", file=sys.stderr, flush=True)


def _epoch_line(row: dict) -> None:
    metric = next((k for k in ("val_accuracy", "train_accuracy", "val_rmse", "train_rmse") if k in row), None)
    extra = f" {metric}={row[metric]:.4f}" if metric else ""
    val = f" val_loss={row['val_loss']:.4f}" if "val_loss" in row else ""
    flags = (" VANISHING:" + ",".join(row["vanishing_layers"])) if row["vanishing_layers"] else ""
    flags += " EXPLODING" if row["exploding"] else ""
    _say(
        f"{row['phase']:6s} epoch {row['epoch']:3d} train_loss={row['train_loss']:.4f}{val}{extra} "
        f"grad_norm={row['grad_norm_mean']:.3g} clipped={row['clipped_fraction']:.0%}{flags} "
        f"({row['seconds']:.1f}s)"
    )


def _train_config(args):
    from models.train import TrainConfig

    fields = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if getattr(args, k, None) is not None}
    return TrainConfig(**fields)


def cmd_train(args) -> int:
    from models.pipeline import train_to_dir

    out = Path(args.workdir) / args.name
    config = _train_config(args)
    _say(f"training {config.cell} on {args.dataset} -> {out}")
    started = time.perf_counter()
    result = train_to_dir(args.dataset, out, config, _epoch_line)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}
    _say(f"done in {time.perf_counter() - started:.0f}s: {shown}")
    _say(f"checkpoint, history.json and training.png are in {out}")
    return 0


def cmd_search(args) -> int:
    from models.data import load_dataset
    from models.search import search, write_table

    space = {
        "cell": args.cells.split(","),
        "hidden_size": [int(v) for v in args.hidden_sizes.split(",")],
        "num_layers": [int(v) for v in args.layers.split(",")],
        "lr": [float(v) for v in args.lrs.split(",")],
        "batch_size": [int(v) for v in args.batch_sizes.split(",")],
    }
    splits = load_dataset(args.dataset, seed=args.seed)
    rows = search(
        splits, _train_config(args), space,
        progress=lambda i, n, row: _say(f"trial {i}/{n}: {row}"),
    )
    _, md = write_table(rows, Path(args.workdir) / args.name)
    print(md.read_text())
    return 0


def cmd_export(args) -> int:
    from export.package import export_bundle
    from export.parity import ParityConfig
    from models.pipeline import CHECKPOINT

    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(args.workdir) / args.name / CHECKPOINT
    parity = ParityConfig(atol=args.atol, max_length=args.max_length, max_batch=args.max_batch)
    started = time.perf_counter()
    bundle = export_bundle(checkpoint, args.name, parity, progress=_say)
    _say(f"stored {bundle.name}:{bundle.version} at {bundle.path} in {time.perf_counter() - started:.0f}s")
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
        _say(f"{args.name}:latest is already in the BentoML model store")
        return 0
    cmd_train(args)
    return cmd_export(args)


def cmd_serve(args) -> int:
    from service.settings import Settings

    env = dict(os.environ)
    overrides = {
        "RNNSERVE_MODEL__NAME": args.model,
        "RNNSERVE_SERVER__HOST": args.host,
        "RNNSERVE_SERVER__HTTP_PORT": args.port,
        "RNNSERVE_SERVER__GRPC_PORT": args.grpc_port,
    }
    env.update({k: str(v) for k, v in overrides.items() if v is not None})
    os.environ.update(env)
    settings = Settings()  # validate everything before starting anything
    server = settings.server
    config = [
        f"services.rnnserve.traffic.timeout={server.request_timeout_s}",
        f"services.rnnserve.traffic.max_concurrency={server.max_concurrency}",
    ]
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(filter(None, [env.get("BENTOML_CONFIG_OPTIONS", "")] + config))
    base = f"http://{server.host}:{server.http_port}"
    _say(f"serving {settings.model.name}:{settings.model.version}: HTTP {base}  gRPC {server.host}:{server.grpc_port}")
    _say(f"try: curl -s {base}/readyz && curl -s -X POST {base}/predict -H 'content-type: application/json' "
         "-d @examples/vowels_request.json")
    cmd = [
        sys.executable, "-m", "service.bentoml_serve", "service.service:RNNService",
        "--host", server.host, "--port", str(server.http_port),
    ]
    os.execvpe(cmd[0], cmd, env)
    return 1  # pragma: no cover


def cmd_datasets(args) -> int:
    from models.data import aeon_datasets

    print("\n".join(aeon_datasets() + ["synthetic", "synthetic-regression"]))
    return 0


def cmd_bench(args) -> int:
    sys.path.insert(0, str(Path.cwd()))
    from bench import serving

    return serving.main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, train=True):
        sp.add_argument("--name", default=DEFAULT_NAME, help="bundle / model name (default: vowels)")
        sp.add_argument("--workdir", default="artifacts", help="training outputs (default: artifacts/)")
        if train:
            sp.add_argument("--dataset", default=DEFAULT_DATASET,
                            help="aeon classification dataset or synthetic (see `rnnserve datasets`)")
            sp.add_argument("--cell", choices=["lstm", "gru", "rnn"])
            sp.add_argument("--hidden-size", dest="hidden_size", type=int)
            sp.add_argument("--num-layers", dest="num_layers", type=int)
            sp.add_argument("--bidirectional", action="store_true", default=None)
            sp.add_argument("--dropout", type=float)
            sp.add_argument("--epochs", type=int)
            sp.add_argument("--batch-size", dest="batch_size", type=int)
            sp.add_argument("--lr", type=float)
            sp.add_argument("--clip-norm", dest="clip_norm", type=float)
            sp.add_argument("--patience", type=int)
            sp.add_argument("--seed", type=int, default=0)

    def export_opts(sp):
        sp.add_argument("--checkpoint", help="default: <workdir>/<name>/checkpoint.pt")
        sp.add_argument("--atol", type=float, default=1e-5, help="parity tolerance (max abs error)")
        sp.add_argument("--max-length", dest="max_length", type=int, default=2000)
        sp.add_argument("--max-batch", dest="max_batch", type=int, default=64)

    sp = sub.add_parser("train", help="train a model (loss curves, gradient-norm diagnostics)")
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("search", help="grid hyperparameter search, writes a ranked table")
    common(sp)
    sp.add_argument("--cells", default="lstm,gru,rnn")
    sp.add_argument("--hidden-sizes", dest="hidden_sizes", default="64,128")
    sp.add_argument("--layers", default="1,2")
    sp.add_argument("--lrs", default="0.003")
    sp.add_argument("--batch-sizes", dest="batch_sizes", default="32")
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("export", help="export ONNX + TorchScript, run the parity gate, store the bundle")
    common(sp, train=False)
    export_opts(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("prepare", help="train + export unless the model store already has the model")
    common(sp)
    export_opts(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("serve", help="serve HTTP (:3000) and gRPC (:8001) through BentoML")
    sp.add_argument("--model", help="model name in the store (RNNSERVE_MODEL__NAME)")
    sp.add_argument("--host", help="RNNSERVE_SERVER__HOST (default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="HTTP port (RNNSERVE_SERVER__HTTP_PORT, default 3000)")
    sp.add_argument("--grpc-port", dest="grpc_port", type=int, help="gRPC port (default 8001; 0 = off)")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("bench", help="serving benchmark (see docs/BENCHMARKS.md)")
    sp.add_argument("bench_args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("datasets", help="list datasets usable offline")
    sp.set_defaults(func=cmd_datasets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
