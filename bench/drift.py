"""Drift-detection quality on streams drawn from the held-out data (issue: observability).

For the served bundle's dataset, streams of windows of ``--window`` sequences are drawn (with
replacement) from the held-out split and fed to the service's DriftMonitor window by window:

  * no shift: fraction of windows with any signal flagged (false alarms; target <= 1%)
  * +0.5 standard deviation on one feature (each feature in turn): windows until that feature is
    flagged (target <= 3)
  * length mix: every sequence stretched x2 in time (median length doubled)

    .venv/bin/python -m rnnserve.bench.drift --model vowels
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rnnserve.bundle.manifest import load
from rnnserve.models.data import load_dataset
from rnnserve.service.observability.drift import DriftMonitor
from rnnserve.service.settings import DriftSettings


def stream(held, rng, window, transform=None):
    while True:
        idx = rng.integers(0, len(held), window)
        seqs = [held.sequences[i] if transform is None else transform(held.sequences[i]) for i in idx]
        yield seqs, held.targets[idx]


def first_detection(monitor, windows, max_windows, signal) -> int | None:
    for k in range(1, max_windows + 1):
        monitor.record(*next(windows))
        if signal in monitor.evaluate()["drifted"]:
            return k
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--null-windows", type=int, default=1000)
    p.add_argument("--trials", type=int, default=20, help="shifted streams per feature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/drift.json")
    args = p.parse_args(argv)
    bundle = load(f"{args.model}:latest")
    reference = bundle.read_json("reference.json")
    held = load_dataset(bundle.manifest["dataset"]).test
    # Predictions as served: the bundle's own classifier on each held-out sequence.
    from rnnserve.export.package import batched_outputs
    from rnnserve.service.runtime.onnx import Runtime

    rt = Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name)
    preds = batched_outputs(rt.run, held.sequences).argmax(axis=1)
    held = type(held)(held.sequences, preds, held.labels, held.task)
    settings = DriftSettings(window_sequences=args.window, min_sequences=args.window)
    rng = np.random.default_rng(args.seed)

    alarms, per_signal = 0, {}
    for seqs, y in (next(stream(held, rng, args.window)) for _ in range(args.null_windows)):
        monitor = DriftMonitor(reference, settings)
        monitor.record(seqs, y)
        drifted = monitor.evaluate()["drifted"]
        alarms += bool(drifted)
        for sig in drifted:
            per_signal[sig] = per_signal.get(sig, 0) + 1
    false_alarm = alarms / args.null_windows

    delays = {}
    for f, fref in enumerate(reference["features"]):
        shift = 0.5 * fref["std"]

        def shifted(s, f=f, shift=shift):
            out = s.copy()
            out[:, f] += shift
            return out

        found = [first_detection(DriftMonitor(reference, settings), stream(held, rng, args.window, shifted), 10,
                                 f"feature_{f}") for _ in range(args.trials)]
        delays[f"feature_{f}"] = found
    length_found = [first_detection(DriftMonitor(reference, settings),
                                    stream(held, rng, args.window, lambda s: np.repeat(s, 2, axis=0)), 10, "length")
                    for _ in range(args.trials)]

    worst = {k: (max(v) if None not in v else None) for k, v in delays.items()}
    result = {"args": vars(args), "false_alarm_rate": false_alarm, "false_alarms_by_signal": per_signal,
              "windows_to_detect_0.5sd_worst": worst, "length_x2_windows_to_detect_worst":
              max(length_found) if None not in length_found else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"false alarms: {alarms}/{args.null_windows} windows = {false_alarm:.2%} {per_signal}")
    print("windows to detect a +0.5 sd shift (worst of", args.trials, "streams):", worst)
    print("windows to detect doubled lengths (worst):", result["length_x2_windows_to_detect_worst"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
