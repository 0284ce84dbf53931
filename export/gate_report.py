"""What the parity gates leave in a bundle: ``parity.json`` (the plain gate's report, with the chunked
gate's under ``streaming``) and ``parity.png`` (max abs error vs length, both gates). Its own module
because it reads both gates' reports (``parity``, ``chunked``), which must not import each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .chunked import ChunkedReport
from .parity import ParityReport


def write_report(report: ParityReport, out_dir: Path, streaming: ChunkedReport | None = None) -> tuple[Path, Path]:
    """``parity.json`` (the plain gate's report, with the chunked gate's under ``streaming``; null for
    a model without a streaming graph) and ``parity.png`` (error vs length, both gates)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "parity.json"
    json_path.write_text(json.dumps({**report.to_dict(), "streaming": streaming and streaming.to_dict()}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for runtime, points in report.error_vs_length.items():
        n, err = zip(*points, strict=True)
        ax.scatter(n, np.maximum(err, 1e-12), s=8, label=runtime, alpha=0.6)
    if streaming is not None:
        n, err = zip(*streaming.error_vs_length, strict=True)
        ax.scatter(n, np.maximum(err, 1e-12), s=8, marker="+", alpha=0.6,
                   label=f"{streaming.runtime} (chunked, x = prefix length)")
    ax.axhline(report.atol, color="r", linestyle="--", label=f"atol {report.atol:g}")
    floor = [(c["max_length"], c["fp32_noise_floor"]) for c in report.cases]
    ax.scatter(*zip(*floor, strict=True), marker="x", color="k", label="float32 eager vs float64 (per case)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="max abs error vs float64 eager")
    passed = report.passed and (streaming is None or streaming.passed)
    ax.set_title("parity: " + ("PASSED" if passed else "FAILED"))
    ax.legend()
    fig.tight_layout()
    png_path = out_dir / "parity.png"
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return json_path, png_path
