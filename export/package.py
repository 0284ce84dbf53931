"""``rnnserve export``: checkpoint -> ONNX + TorchScript (+ the streaming graph of a unidirectional
model) -> parity gates (plain; chunked for the streaming graph) -> bundle in the store.

Nothing enters the model store unless every gate passes."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rnnserve.bundle import manifest as bundle
from rnnserve.bundle.batch import pad
from rnnserve.bundle.reference import reference_stats
from rnnserve.models.checkpoint import load_checkpoint, load_held_out
from rnnserve.models.data import SequenceData

from .artifacts import export_onnx, export_torchscript
from .chunked import check_chunked_parity, onnx_stream_runner
from .gate_report import write_report
from .parity import ParityConfig, check_parity, onnx_runner, raise_for_failures, torchscript_runner
from .streaming import export_streaming_onnx, streaming_unavailable

GOLDEN_COUNT = 16
TRAINING_FILES = ("history.json", "training.png")


def batched_outputs(run, sequences, batch: int = 64) -> np.ndarray:
    order = np.argsort([len(s) for s in sequences])  # length-sorted: little padding
    out = [None] * len(sequences)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        x, lengths = pad([sequences[i] for i in idx])
        for i, row in zip(idx, run(x, lengths), strict=True):
            out[i] = row
    return np.stack(out)


def _golden_pick(data: SequenceData) -> list[int]:
    """Indices spread over the held-out length range (shortest, longest, quantiles)."""
    order = np.argsort(data.lengths, kind="stable")
    picks = np.linspace(0, len(order) - 1, min(GOLDEN_COUNT, len(order))).round().astype(int)
    return [int(order[p]) for p in picks]


def export_bundle(
    checkpoint_path: Path,
    name: str,
    parity: ParityConfig = ParityConfig(),
    progress: Callable[[str], None] = lambda _: None,
) -> bundle.Bundle:
    ckpt = load_checkpoint(checkpoint_path)
    model = ckpt.build()
    held_out = load_held_out(checkpoint_path, ckpt.dataset)
    with tempfile.TemporaryDirectory(prefix="rnnserve-export-") as tmp:
        staging = Path(tmp)
        progress("exporting ONNX (dynamic batch/time, native RNN op with sequence_lens)")
        onnx_path = export_onnx(model, staging / bundle.ONNX_FILE)
        progress("exporting TorchScript")
        ts_path = export_torchscript(model, staging / bundle.TORCHSCRIPT_FILE)
        unavailable = streaming_unavailable(model)
        stream = None
        if unavailable is None:
            progress("deriving the streaming graph from model.onnx (initial and final state of every layer, "
                     "batch-major)")
            stream = export_streaming_onnx(model, onnx_path, staging / bundle.STREAMING_FILE)
        else:
            progress(f"no streaming graph: {unavailable}")
        progress(f"parity gate: lengths 1..{parity.max_length}, batches 1..{parity.max_batch}")
        run_onnx = onnx_runner(onnx_path)
        report = check_parity(
            model,
            {"onnx": run_onnx, "torchscript": torchscript_runner(ts_path)},
            parity,
            train_max=ckpt.train_lengths[1],
            progress=lambda case: progress(f"  parity case {case}"),
        )
        chunked = None
        if stream is not None:
            progress(f"chunked parity gate: streams up to {parity.max_length} steps in random chunks, "
                     f"state carried, mixed batches up to {parity.max_batch} rows")
            chunked = check_chunked_parity(
                model, onnx_stream_runner(staging / stream.file, stream), stream, parity,
                train_max=ckpt.train_lengths[1], progress=lambda case: progress(f"  chunked case {case}"),
            )
        write_report(report, staging, chunked)
        raise_for_failures(report, chunked)
        progress(
            "parity passed: max abs error "
            + ", ".join(f"{rt} {report.max_abs(rt):.2e}" for rt in report.error_vs_length)
            + ("" if chunked is None else f", {chunked.runtime} (chunked) {chunked.max_abs:.2e}")
        )
        outputs = batched_outputs(run_onnx, held_out.sequences)
        streaming_fields = None
        if stream is not None:
            run_stream = onnx_stream_runner(staging / stream.file, stream)
            zero_state = batched_outputs(lambda x, n: run_stream(x, n, stream.zero_states(len(x)))[0],
                                         held_out.sequences)
            streaming_fields = {
                **stream.to_manifest(ckpt.spec.input_size, ckpt.spec.output_size),
                "plain_requests": {
                    "max_abs_vs_plain_graph": float(np.abs(zero_state - outputs).max()),
                    "on": f"{ckpt.dataset} held-out split ({len(held_out)} sequences, length-sorted batches of 64), "
                          f"all-zero states, ONNX Runtime CPU",
                },
            }
        reference = reference_stats(
            held_out.sequences, outputs, ckpt.spec.task, ckpt.labels,
            source=f"{ckpt.dataset} held-out split ({len(held_out)} sequences)",
        )
        (staging / "reference.json").write_text(json.dumps(reference, indent=1))
        picks = _golden_pick(held_out)
        with torch.no_grad():
            eager = [
                model(torch.from_numpy(held_out.sequences[i][None]), torch.tensor([held_out.lengths[i]]))[0].numpy()
                for i in picks
            ]
        gold = bundle.golden([held_out.sequences[i] for i in picks], np.stack(eager))
        (staging / "golden.json").write_text(json.dumps(gold))
        for extra in TRAINING_FILES:
            src = checkpoint_path.parent / extra
            if src.is_file():
                shutil.copy2(src, staging / extra)
        fields = {
            "spec": ckpt.spec.to_dict(),
            "labels": ckpt.labels,
            "normalisation": {
                "mean": model.feature_mean.tolist(),
                "std": (1.0 / model.feature_inv_std).tolist(),
                "applied": "inside the graph",
            },
            "metrics": ckpt.metrics,
            "dataset": ckpt.dataset,
            "train_lengths": ckpt.train_lengths,
            "parity": {**report.to_dict(), "streaming": chunked and chunked.to_dict()},
            "streaming": streaming_fields,
            "streaming_unavailable": unavailable,
        }
        progress(f"storing bundle {name} in the BentoML model store")
        return bundle.store(staging, name, fields)
