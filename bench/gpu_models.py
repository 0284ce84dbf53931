"""The models a GPU run measures, made here so that nothing trains or exports on the GPU machine.

Two bundles, each exported by the project's own path (``export.package.export_bundle``: ONNX,
TorchScript, the streaming graph, both parity gates) into a private BentoML model store under
``DIR/store``:

- ``default``: the default model, exported again from its checkpoint (``rnnserve train`` wrote it);
- ``large``: an LSTM of ``--large`` size (512 units x 2 layers) with random weights on the default
  model's dataset (its features, classes and normalisation), since its speed, not its accuracy, is
  what the GPU run measures.

Beside each bundle, ``DIR/<name>.gate.npz`` holds the plain parity gate's cases as the gate ran them:
every case's inputs and its float64 eager truth and tolerance (``export.parity.case_truths``), so the
GPU machine runs the gate's ONNX checks on CUDA with numpy and ONNX Runtime alone (no torch there).
``DIR/models.json`` indexes all of it. ``--small`` (the dry run) makes both models tiny, with random
weights on the synthetic dataset, and gates of short sequences.

    python -m rnnserve.bench.gpu_models --out build/gpu-payload/stage/models \\
        --default-checkpoint artifacts/vowels/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

INDEX = "models.json"


def random_checkpoint(path: Path, dataset: str, hidden: int, layers: int, seed: int = 0) -> Path:
    """A checkpoint of an LSTM of ``hidden`` x ``layers`` with random weights for ``dataset`` (its
    features, classes, normalisation and training lengths), as ``rnnserve train`` would save one."""
    import torch

    from rnnserve.models.checkpoint import save_checkpoint
    from rnnserve.models.data import feature_stats, load_dataset
    from rnnserve.models.nets import ModelSpec, build_model

    splits = load_dataset(dataset)
    train = splits.train
    spec = ModelSpec(cell="lstm", input_size=train.num_features, output_size=train.output_size,
                     hidden_size=hidden, num_layers=layers)
    torch.manual_seed(seed)
    model = build_model(spec)
    mean, std = feature_stats(train)
    model.feature_mean.copy_(torch.from_numpy(mean))
    model.feature_inv_std.copy_(1.0 / torch.from_numpy(std).clamp_min(1e-8))
    lengths = train.lengths
    save_checkpoint(path, model.eval(), labels=train.labels, dataset=dataset,
                    metrics={"weights": f"random (seed {seed}): for timing, not accuracy"},
                    train_lengths=(int(lengths.min()), int(lengths.max())))
    return path


def write_gate_reference(checkpoint: Path, config, onnx_path: Path, path: Path) -> dict:
    """The plain gate's cases for this checkpoint's model and ``config``, as the gate runs them: per
    case its lengths, its sequences (concatenated), float64 truth, tolerance, and what ONNX Runtime on
    CPU answered for ``onnx_path`` (so the GPU run compares CUDA with CPU without running the CPU
    side again: for a 512x2 LSTM the cases are about 1 TFLOP). Plain arrays only, so
    ``np.load(..., allow_pickle=False)`` reads it."""
    from rnnserve.bundle.batch import pad
    from rnnserve.export.parity import case_truths, onnx_runner, single_threaded_torch
    from rnnserve.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    with single_threaded_torch():
        truths = list(case_truths(ckpt.build(), config, ckpt.train_lengths[1]))
    cpu = onnx_runner(onnx_path)
    np.savez_compressed(
        path,
        names=np.array([t.case.name for t in truths]),
        batch=np.array([len(t.seqs) for t in truths], dtype=np.int64),
        lengths=np.concatenate([[len(s) for s in t.seqs] for t in truths]).astype(np.int64),
        steps=np.concatenate([s for t in truths for s in t.seqs]).astype(np.float32),
        truth=np.concatenate([t.truth for t in truths]).astype(np.float64),
        onnx_cpu=np.concatenate([cpu(*pad(t.seqs)) for t in truths]).astype(np.float32),
        tolerance=np.array([t.tolerance(config) for t in truths]),
        noise=np.array([t.noise for t in truths]),
    )
    return {"cases": len(truths), "sequences": int(sum(len(t.seqs) for t in truths))}


def export_one(role: str, name: str, checkpoint: Path, config, out: Path) -> dict:
    """Export ``checkpoint`` as bundle ``name`` (both gates) and write its gate reference."""
    from rnnserve.export.package import export_bundle

    started = time.perf_counter()
    bundle = export_bundle(checkpoint, name, config, progress=lambda m: print(f"[gpu-models] {name}: {m}",
                                                                               flush=True))
    gate = write_gate_reference(checkpoint, config, bundle.onnx_path, out / f"{name}.gate.npz")
    spec = bundle.manifest["spec"]
    print(f"[gpu-models] {role} {name}:{bundle.version} ({spec['cell']} {spec['hidden_size']}x{spec['num_layers']}) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return {"role": role, "name": name, "version": bundle.version,
            "bundle": str(bundle.path.resolve().relative_to(out.resolve())), "gate": f"{name}.gate.npz",
            "gate_cases": gate, "parity": asdict(config), "spec": spec}


def prepare(out: Path, default_checkpoint: Path | None, default_name: str, large: tuple[int, int],
            small: bool) -> dict:
    """Both bundles into ``out/store``, their gate references and ``out/models.json``; the
    checkpoints made here stay in a temporary folder (they do not travel)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rnnserve-gpu-models-") as tmp:
        return _prepare(out, Path(tmp), default_checkpoint, default_name, large, small)


def _prepare(out: Path, work: Path, default_checkpoint: Path | None, default_name: str, large: tuple[int, int],
             small: bool) -> dict:
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.checkpoint import load_checkpoint

    if small:
        dataset = "synthetic"
        default_checkpoint = random_checkpoint(work / "default.pt", dataset, hidden=16, layers=1)
        config = ParityConfig(max_length=60, max_batch=8)
    else:
        if default_checkpoint is None or not default_checkpoint.is_file():
            raise SystemExit(f"no checkpoint at {default_checkpoint}: train the default model first "
                             f"(`rnnserve train --name {default_name}`, or `make model`)")
        dataset = load_checkpoint(default_checkpoint).dataset
        config = ParityConfig()  # the gates of `rnnserve export` (measured: 121-126 s for the 512x2 model here)
    large_checkpoint = random_checkpoint(work / "large.pt", dataset, hidden=large[0], layers=large[1])
    models = [export_one("default", default_name, default_checkpoint, config, out),
              export_one("large", f"lstm{large[0]}x{large[1]}", large_checkpoint, config, out)]
    index = {"dataset": dataset, "small": small, "models": models}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


def size(text: str) -> tuple[int, int]:
    hidden, _, layers = text.partition("x")
    return int(hidden), int(layers or 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.gpu_models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for store/, models.json and the gate references")
    p.add_argument("--default-checkpoint", type=Path, help="the default model's checkpoint (rnnserve train)")
    p.add_argument("--default-name", default="vowels")
    p.add_argument("--large", type=size, default=(512, 2), help="the larger LSTM, HIDDENxLAYERS (default 512x2)")
    p.add_argument("--small", action="store_true", help="dry run: tiny random models on synthetic data")
    args = p.parse_args(argv)
    if "bentoml" in sys.modules:
        raise SystemExit("BentoML is already imported: run this as its own process so the store is DIR/store")
    os.environ["BENTOML_HOME"] = str((args.out / "store").resolve())  # before bentoml is imported
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if args.small and args.large == (512, 2):
        args.large = (32, 2)
    prepare(args.out, args.default_checkpoint, args.default_name, args.large, args.small)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
