"""The streaming graph beside the plain graph, in one run, in-process (ONNX Runtime, no server):

  (1) speed for plain requests: the lognormal length mix of ``rnnserve.loadtests.payloads`` (median
      50, max 500), cut into batches of ``--max-batch`` and each batch into length buckets by the
      serving planner (``service.batching.planner.plan``, cost model calibrated on the plain graph,
      the serving bucket-efficiency floor). The same padded buckets go through ``model.onnx``, through
      ``streaming.onnx`` fed all-zero states fetching only ``output`` (a plain request served by the
      streaming graph), and through ``streaming.onnx`` fetching every state too (a stream chunk).
      Sessions use the serving options (one intra-op thread per CPU of this process, no spinning).
      Variants alternate within each round; the figure is the ratio of median round times.
  (2) chunked vs whole-sequence: streams fed chunk by chunk with their state carried, in mixed
      batches (the chunked gate's cases on random inputs, and the model's own held-out sequences,
      each in random chunks, and concatenated into long streams), every answer compared with the
      plain graph and with the streaming graph run on the whole prefix in one call from zero state.

``--cells gru,rnn`` repeats (1) on randomly initialised models of the bundle's size and shape for
those cells (exported here), since the cost of ``sequence_lens`` differs per cell.

    nice -n 19 .venv/bin/python -m rnnserve.bench.streaming --model vowels --cells gru,rnn
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int):
    """ONNX Runtime with the serving options (as ``service.runtime.onnx.Runtime`` sets them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def planned_batches(plain, num_features: int, args) -> tuple[list, float, dict]:
    from rnnserve.bundle.batch import pad
    from rnnserve.bundle.signature import Signature
    from rnnserve.loadtests.payloads import sequences
    from rnnserve.service.batching.planner import padding_efficiency, plan
    from rnnserve.service.runtime.cost import CostModel, calibrate
    from rnnserve.service.settings import BatchingSettings

    def run(x, lengths):
        return plain.run(["output"], {"x": x, "lengths": lengths})[0]

    if args.cost == "auto":
        cost = calibrate(run, Signature.for_features(num_features, 1).random_batch, args.max_batch, repeats=10)
    else:
        cost = CostModel(*(float(v) * 1e-6 for v in args.cost.split(",")))
    floor = BatchingSettings().min_bucket_efficiency
    seqs = sequences(args.sequences, num_features, "lognormal", seed=args.seed)
    batches, real, computed = [], 0, 0
    for lo in range(0, len(seqs) - args.max_batch + 1, args.max_batch):
        group = seqs[lo : lo + args.max_batch]
        lengths = np.array([len(s) for s in group])
        buckets = plan(lengths, cost, args.max_batch, floor)
        batches += [pad([group[i] for i in b]) for b in buckets]
        r, c = padding_efficiency(lengths, buckets)
        real, computed = real + r, computed + c
    cost_us = {"fixed": cost.fixed * 1e6, "per_step": cost.per_step * 1e6, "per_row_step": cost.per_row_step * 1e6}
    return batches, real / computed, cost_us


def speed(plain_path: Path, stream_path: Path, spec, num_features: int, args) -> dict:
    """Every bucket goes through every variant back to back (the order rotating from bucket to
    bucket), so a change in the machine's load hits all variants alike; per variant, CPU time (this
    process, all ONNX Runtime threads) and wall time are summed over its own calls."""
    threads = len(os.sched_getaffinity(0))
    plain, stream = session(plain_path, threads), session(stream_path, threads)
    batches, efficiency, cost = planned_batches(plain, num_features, args)
    x_name, lengths_name = spec.inputs
    everything = [spec.output, *spec.state_outputs]

    def feed(x, lengths):
        return {x_name: x, lengths_name: lengths, **dict(zip(spec.state_inputs, spec.zero_states(len(x)),
                                                            strict=True))}

    variants = {
        "plain graph (model.onnx)": lambda x, n: plain.run(["output"], {"x": x, "lengths": n}),
        "streaming graph, zero state, output only": lambda x, n: stream.run([spec.output], feed(x, n)),
        "streaming graph, zero state, output + states": lambda x, n: stream.run(everything, feed(x, n)),
    }
    names = list(variants)
    plain_run, stream_run = variants[names[0]], variants[names[1]]
    diff = max(float(np.abs(plain_run(x, n)[0] - stream_run(x, n)[0]).max()) for x, n in batches)  # + warm-up
    wall = {k: [0.0] * args.rounds for k in names}
    cpu = {k: [0.0] * args.rounds for k in names}
    for r in range(args.rounds):
        for i, (x, lengths) in enumerate(batches):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                w0, c0 = time.perf_counter(), time.process_time()
                variants[name](x, lengths)
                cpu[name][r] += time.process_time() - c0
                wall[name][r] += time.perf_counter() - w0
    n = sum(len(x) for x, _ in batches)
    rows = {}
    for name in names:
        cpu_ratio = [a / b for a, b in zip(cpu[name], cpu[names[0]], strict=True)]
        rows[name] = {"cpu_us_per_seq": statistics.median(cpu[name]) / n * 1e6,
                      "seq_per_s": n / statistics.median(wall[name]),
                      "cpu_ratio_vs_plain": statistics.median(cpu_ratio),
                      "cpu_ratio_min_max": [min(cpu_ratio), max(cpu_ratio)],
                      "wall_ratio_vs_plain": statistics.median(
                          [a / b for a, b in zip(wall[name], wall[names[0]], strict=True)])}
    return {"sequences_per_round": n, "buckets_per_round": len(batches), "padding_efficiency": efficiency,
            "cost_model_us": cost, "threads": threads, "rounds": args.rounds,
            "max_abs_streaming_vs_plain": diff, "variants": rows}


def chunked_vs_whole(bundle, args) -> dict:
    from rnnserve.bundle.batch import pad
    from rnnserve.export.chunked import StreamCase, chunking, mixed_calls, onnx_stream_runner, run_case, stream_cases
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.data import load_dataset

    spec = bundle.streaming
    threads = len(os.sched_getaffinity(0))
    plain, whole_stream = session(bundle.onnx_path, threads), session(bundle.streaming_path, threads)
    run = onnx_stream_runner(bundle.streaming_path, spec)
    rng = np.random.default_rng(args.seed)
    mean, std = (np.asarray(bundle.manifest["normalisation"][k], dtype=np.float32) for k in ("mean", "std"))
    sources = []
    for case in stream_cases(ParityConfig(), int(bundle.manifest["train_lengths"][1])):
        seqs = [(mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32) for n in case.lengths]
        sources.append(("random inputs (gate's cases)", case, seqs))
    held = list(load_dataset(bundle.manifest["dataset"]).test.sequences)
    chunks = [chunking(len(s), rng) for s in held]
    sources.append((f"{bundle.manifest['dataset']} held-out, {len(held)} streams in mixed batches",
                    StreamCase("held-out", tuple(chunks), tuple(mixed_calls(chunks, 64, rng, 0.5))), held))
    long_streams = []
    order = iter(rng.permutation(len(held)).tolist() * 20)
    for _ in range(8):
        parts, total = [], 0
        while total < 2000:
            parts.append(held[next(order)])
            total += len(parts[-1])
        long_streams.append(np.concatenate(parts)[:2000])
    chunks = [chunking(len(s), rng, cap=200) for s in long_streams]
    sources.append((f"{bundle.manifest['dataset']} held-out concatenated into 8 streams of 2000 steps",
                    StreamCase("concatenated", tuple(chunks), tuple(mixed_calls(chunks, 8, rng, 0.5))), long_streams))
    out = {}
    for label, case, seqs in sources:
        answers = run_case(case, seqs, run, spec)
        by_stream: dict[int, list] = {}
        for a in answers:
            by_stream.setdefault(a.stream, []).append(a)
        err_plain, err_stream = [], []
        for s, got in by_stream.items():
            x, lengths = pad([seqs[s][: a.steps] for a in got])
            want_plain = plain.run(["output"], {"x": x, "lengths": lengths})[0]
            feed = {"x": x, "lengths": lengths, **dict(zip(spec.state_inputs, spec.zero_states(len(x)), strict=True))}
            want_stream = whole_stream.run([spec.output], feed)[0]
            for a, p, w in zip(got, want_plain, want_stream, strict=True):
                err_plain.append((a.steps, float(np.abs(a.output - p).max())))
                err_stream.append((a.steps, float(np.abs(a.output - w).max())))
        row = out.setdefault(label, {"answers": 0})
        row["answers"] += len(answers)
        for key, errs in (("vs_plain_graph", err_plain), ("vs_streaming_graph_whole", err_stream)):
            for cap in (100, 2000):
                k = f"{key}_max_abs_upto_{cap}"
                row[k] = max(row.get(k, 0.0), max((e for n, e in errs if n <= cap), default=0.0))
    return out


def random_bundle_like(bundle, cell: str, directory: Path):
    """A randomly initialised model of the bundle's shape with another cell, exported both ways."""
    import torch

    from rnnserve.export.artifacts import export_onnx
    from rnnserve.export.streaming import export_streaming_onnx
    from rnnserve.models.nets import ModelSpec, build_model

    torch.manual_seed(0)
    s = bundle.manifest["spec"]
    model = build_model(ModelSpec(cell=cell, input_size=s["input_size"], output_size=s["output_size"],
                                  hidden_size=s["hidden_size"], num_layers=s["num_layers"])).eval()
    plain = export_onnx(model, directory / f"{cell}.onnx")
    spec = export_streaming_onnx(model, plain, directory / f"{cell}-streaming.onnx")
    return plain, directory / spec.file, spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.streaming", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels", help="bundle in the BentoML model store (name[:version])")
    p.add_argument("--sequences", type=int, default=64 * 24, help="sequences per round (lognormal mix)")
    p.add_argument("--max-batch", dest="max_batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost", default="auto", help="planner cost model: auto (calibrated on the plain graph) or "
                   "FIXED,PER_STEP,PER_ROW_STEP in microseconds")
    p.add_argument("--cells", default="", help="also time random models of these cells (e.g. gru,rnn)")
    p.add_argument("--skip-parity", action="store_true", help="speed only")
    p.add_argument("--derived", action="store_true", help="also time the state-carrying graph derived from "
                   "model.onnx (export.derive), beside the bundle's built one")
    p.add_argument("--out", default="bench/results/streaming.json")
    args = p.parse_args(argv)

    from rnnserve.bundle.manifest import load

    bundle = load(f"{args.model}:latest" if ":" not in args.model else args.model)
    if bundle.streaming is None:
        raise SystemExit(f"{bundle.name}:{bundle.version} has no streaming graph: {bundle.streaming_unavailable}")
    started = time.perf_counter()
    result = {"bundle": f"{bundle.name}:{bundle.version}", "cell": bundle.manifest["cell"],
              "speed": {bundle.manifest["cell"] + " (bundle)": speed(bundle.onnx_path, bundle.streaming_path,
                                                                      bundle.streaming, bundle.num_features, args)}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.derived:  # the state-carrying graph derived from model.onnx, beside the built one
            from rnnserve.export.derive import derive_streaming

            derived = derive_streaming(bundle.onnx_path, Path(tmp) / "derived.onnx")
            result["speed"][bundle.manifest["cell"] + " (derived from model.onnx)"] = speed(
                bundle.onnx_path, Path(tmp) / "derived.onnx", derived, bundle.num_features, args)
        for cell in [c for c in args.cells.split(",") if c]:
            plain, streaming, spec = random_bundle_like(bundle, cell, Path(tmp))
            result["speed"][f"{cell} (random weights)"] = speed(plain, streaming, spec, bundle.num_features, args)
    if not args.skip_parity:
        result["chunked_vs_whole"] = chunked_vs_whole(bundle, args)
        result["gate_vs_float64"] = bundle.read_json("parity.json")["streaming"]["bands"]
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for model, r in result["speed"].items():
        c = r["cost_model_us"]
        print(f"\n{model}: {r['sequences_per_round']} sequences in {r['buckets_per_round']} buckets per round "
              f"(cost model {c['fixed']:.0f} us + steps x ({c['per_step']:.2f} + {c['per_row_step']:.3f} x rows) us), "
              f"padding efficiency {r['padding_efficiency']:.2f}, {r['threads']} thread(s), {r['rounds']} rounds; "
              f"streaming vs plain max abs {r['max_abs_streaming_vs_plain']:.1e}")
        print("| variant | CPU us/seq | CPU vs plain (median of rounds) | min..max | seq/s | wall vs plain |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, v in r["variants"].items():
            lo, hi = v["cpu_ratio_min_max"]
            print(f"| {name} | {v['cpu_us_per_seq']:.0f} | {v['cpu_ratio_vs_plain']:.3f} | {lo:.3f}..{hi:.3f} "
                  f"| {v['seq_per_s']:,.0f} | {v['wall_ratio_vs_plain']:.3f} |")
    if "chunked_vs_whole" in result:
        print("\n| streams | answers | vs plain graph, len <= 100 | <= 2000 | vs streaming graph whole, <= 100 "
              "| <= 2000 |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, r in result["chunked_vs_whole"].items():
            print(f"| {label} | {r['answers']} | {r['vs_plain_graph_max_abs_upto_100']:.1e} | "
                  f"{r['vs_plain_graph_max_abs_upto_2000']:.1e} | {r['vs_streaming_graph_whole_max_abs_upto_100']:.1e} "
                  f"| {r['vs_streaming_graph_whole_max_abs_upto_2000']:.1e} |")
    print(f"\n({result['seconds']:.0f} s; JSON in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
