"""rnnserve vs Triton (PyTriton) vs MLServer on the same ONNX model, the same client, the same workload.

    .venv/bin/python -m rnnserve.bench.peers --concurrency 8,32,64 --duration 10
    .venv/bin/python -m rnnserve.bench.peers --model vowels-lstm128x2   # the heavier model, built if absent

``--model`` names a bundle in the model store; the benchmark's own heavier model (``BUILT``: the old
default LSTM(128)x2 on the same data, a few epochs: its weights do not change its cost) is trained
and exported on first use. Each model's table has its own markers in docs/BENCHMARKS.md.

Sets up each peer in its own venv under .venv-peers/ (pinned in bench/peers/requirements-*.txt;
skipped when present), serves the bundle's ONNX file from each on loopback, checks that every
server's answers equal in-process ONNX Runtime, then drives each with the same closed-loop v2 gRPC
client (bench/serving.py) on the lognormal length mix (median 50, max 500), one sequence per
request, in ``--rounds`` rounds (default 3), each in a rotated order on fresh servers (``orders``),
reporting each configuration's round of median throughput. Placement as in bench/serving.py: every
server is pinned to ``--server-cpus`` (``taskset``; ONNX Runtime gets one intra-op thread per CPU in
every server) and the client to ``--client-cpus``, so the client's own cost does not cap any server.
Writes bench/results/peers.json, a plot, and the
table between the ``peers`` markers in docs/BENCHMARKS.md.

Peers batch by concatenating requests, so by default only equal shapes can share a batch; each is run in
its honest configurations (see CONFIGS) and the best one is compared:
- Triton's dynamic batcher groups only requests of equal shape unless the input allows ragged
  batching: raw lengths (few batches form), the client pads each sequence up to a multiple of 32
  steps or to the maximum and sends its true length (requests in the same bucket batch), or
  ragged batching with raw lengths (any lengths batch; the callable pads each batch to its longest).
- MLServer's adaptive batcher concatenates payloads under the first request's shape, so mixed
  lengths are wrong: batching off with raw lengths, or every sequence padded to the maximum (500).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rnnserve.bench.peers.peer_common import THREADS_ENV
from rnnserve.bench.serving import (
    closed_loop,
    cpu_set,
    default_cpus,
    infer_requests,
    median_run,
    scrape,
    server_cpu_seconds,
)
from rnnserve.harness.launch import ROOT, ManagedProcess, ServerProcess, free_port
from rnnserve.harness.markdown import write_between
from rnnserve.loadtests.payloads import sequences

PEERS_DIR = Path(__file__).resolve().parent
VENVS = ROOT / ".venv-peers"
DEFAULT_MODEL = "vowels"  # what `make model` builds; its table and plot carry no model name
MAX_LENGTH = 500  # the lognormal mix's cap (loadtests/payloads.py)

# models the benchmark builds when they are not in the store: name -> `rnnserve prepare` options
BUILT = {
    "vowels-lstm128x2": ["--hidden-size", "128", "--num-layers", "2", "--epochs", "3", "--no-baseline"],
}

# name -> (server, server options, client shape policy)
CONFIGS = {
    "rnnserve": ("rnnserve", {}, "raw"),
    "rnnserve_batch32": ("rnnserve", {"RNNSERVE_BATCHING__MAX_BATCH_SIZE": "32"}, "raw"),  # shorter batches: tail
    "triton_pad_max": ("triton", {"--max-batch": "64"}, f"max:{MAX_LENGTH}"),
    "triton_pad_max_2_instances": ("triton", {"--max-batch": "64", "--instances": "2"}, f"max:{MAX_LENGTH}"),
    "triton_bucket32": ("triton", {"--max-batch": "64"}, "bucket:32"),
    "triton_bucket32_2_instances": ("triton", {"--max-batch": "64", "--instances": "2"}, "bucket:32"),
    "triton_raw": ("triton", {"--max-batch": "64"}, "raw+lengths"),
    "triton_ragged": ("triton", {"--max-batch": "64", "--ragged": ""}, "raw+lengths"),
    "triton_ragged_2_instances": ("triton", {"--max-batch": "64", "--ragged": "", "--instances": "2"}, "raw+lengths"),
    "mlserver_pad_max": ("mlserver", {"--max-batch": "64"}, f"max:{MAX_LENGTH}"),
    "mlserver_no_batching": ("mlserver", {"--max-batch": "0"}, "raw+lengths"),
    "mlserver_no_batching_in_process": ("mlserver", {"--max-batch": "0", "--parallel-workers": "0"}, "raw+lengths"),
}


def venv_python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def setup(peer: str) -> Path:
    """Create the peer's venv from its pinned requirements (plain pip, registry only), once."""
    py = venv_python(peer)
    req = PEERS_DIR / f"requirements-{peer}.txt"
    stamp = VENVS / peer / ".installed"
    if py.exists() and stamp.exists() and stamp.read_text() == req.read_text():
        return py
    print(f"setting up {peer} in {VENVS / peer} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENVS / peer)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(req.read_text())
    return py


class PeerProcess(ManagedProcess):
    def __init__(self, peer: str, model: str, onnx: Path, features: int, classes: int, options: dict,
                 cpus: str | None = None) -> None:
        """``cpus``: pin the peer (and everything it starts) there, with one ONNX Runtime intra-op
        thread per CPU; None leaves both to the system."""
        http, grpc_port, metrics = free_port(), free_port(), free_port()
        self.url, self.grpc_url = f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics" if peer == "triton" else None
        py = venv_python(peer)
        cmd = [str(py), str(PEERS_DIR / f"{peer}_peer.py"), "--onnx", str(onnx), "--model", model,
               "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics)]
        if peer == "triton":
            cmd += ["--features", str(features), "--classes", str(classes)]
        for k, v in options.items():  # "" marks a flag without a value
            cmd += [k, v] if v else [k]
        env = dict(os.environ)
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
            env[THREADS_ENV] = str(len(cpu_set(cpus)))
        if peer == "triton":  # the tritonserver binary links libpython from the interpreter's LIBDIR
            libdir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                    check=True, capture_output=True, text=True).stdout.strip()
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
        super().__init__(cmd, env, f"{self.url}/v2/models/{model}/ready", name=f"peer-{peer}")


def start(config: str, model: str, bundle, cpus: str):
    server, options, _ = CONFIGS[config]
    if server == "rnnserve":
        return ServerProcess(model, {"RNNSERVE_BATCHING__MAX_BATCH_SIZE": "64",
                                     "RNNSERVE_RUNTIME__INTRA_OP_THREADS": str(len(cpu_set(cpus))), **options},
                             cpus=cpus)
    classes = bundle.manifest["outputs"][0]["shape"][1]
    return PeerProcess(server, model, bundle.onnx_path, bundle.num_features, classes, options, cpus)


def batch_counts(srv) -> tuple[float, float] | None:
    """(sequences, model executions) from the server's own metrics, where it has them (rnnserve,
    Triton; not MLServer): their ratio is the mean batch."""
    if isinstance(srv, ServerProcess):
        m = scrape(srv.url)
        return m["rnnserve_batch_sequences_sum"], m["rnnserve_batch_sequences_count"]
    url = getattr(srv, "metrics_url", None)
    if not url:
        return None
    import urllib.request

    from rnnserve.harness.promtext import total

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return total(text, "nv_inference_request_success"), total(text, "nv_inference_exec_count")


def verify(grpc_url: str, requests: list, seqs, reference, atol: float = 1e-4, at_once: bool = False) -> float:
    """The server's answers for the first 16 requests equal in-process ONNX Runtime on the unpadded
    sequences; returns the largest difference. ``at_once``: send all 16 before reading any answer,
    so the server may batch them."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    worst = 0.0
    with grpc.insecure_channel(grpc_url, options=[("grpc.max_receive_message_length", 1 << 26)]) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        if at_once:
            sent = [stub.ModelInfer.future(req, timeout=60) for req in requests[:16]]
            replies = (f.result() for f in sent)
        else:
            replies = (stub.ModelInfer(req, timeout=60) for req in requests[:16])
        for reply, s in zip(replies, seqs[:16], strict=True):
            got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(-1)
            worst = max(worst, float(np.abs(got - reference(s).reshape(-1)).max()))
    if not worst <= atol:
        raise AssertionError(f"{grpc_url} answers differ from ONNX Runtime by {worst:.3g}")
    return worst


def ensure_model(model: str) -> None:
    """Train and export ``model`` (one of ``BUILT``) into the model store unless it is there."""
    from rnnserve.bundle.manifest import BundleError, load

    try:
        load(f"{model}:latest")
        return
    except BundleError:
        if model not in BUILT:
            raise
    import tempfile

    print(f"building {model} (not in the model store) ...", flush=True)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "rnnserve.cli", "prepare", "--name", model, "--workdir", work,
                        *BUILT[model]], check=True)


def orders(configs: list[str], rounds: int) -> list[list[str]]:
    """Each round's order of the configurations: every one once per round, the list rotated by
    ``round * len / rounds`` so that no configuration always runs first (or last). One pass in a fixed
    order moved the comparisons by 15-30% with a configuration's place in the run and the machine's
    drift (docs/BENCHMARKS.md); medians over rotated rounds keep both out of the comparison."""
    n = len(configs)
    return [configs[r * n // rounds:] + configs[:r * n // rounds] for r in range(rounds)]


def measure(config: str, args, bundle, seqs, reference, concurrencies: list[int]) -> dict[str, dict]:
    """One fresh server of ``config``: its answers checked, then each concurrency's closed loop."""
    requests = infer_requests(args.model, seqs, CONFIGS[config][2])
    real = sum(len(s) for s in seqs)
    sent = sum(req.inputs[0].shape[1] for req in requests)
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    with start(config, args.model, bundle, args.server_cpus) as srv:
        ready_s = time.perf_counter() - t0
        err = verify(srv.grpc_url, requests, seqs, reference)
        for c in concurrencies:
            cpu0, counts0 = server_cpu_seconds(srv.proc.pid), batch_counts(srv)
            r = asyncio.run(closed_loop(srv.grpc_url, requests, c, args.duration, args.warmup))
            cpu, counts1 = server_cpu_seconds(srv.proc.pid) - cpu0, batch_counts(srv)
            if counts0 and counts1 and counts1[1] > counts0[1]:
                r["mean_batch_sequences"] = (counts1[0] - counts0[0]) / (counts1[1] - counts0[1])
            r.update(server_cpu_us_per_seq=cpu / max(1, r["requests"]) * args.duration
                     / (args.duration + args.warmup) * 1e6,
                     client_padding_efficiency=real / sent, max_abs_error=err, ready_s=ready_s)
            out[str(c)] = r
            print(f"  c={c}: {json.dumps(r)}", flush=True)
    return out


def run(args) -> dict:
    """Every configuration in every round (orders()); per configuration and concurrency the round of
    median throughput, with ``rounds_seq_s`` (each round's throughput, in round order) beside it."""
    from rnnserve.bundle.batch import pad
    from rnnserve.bundle.manifest import load
    from rnnserve.service.runtime.onnx import Runtime

    ensure_model(args.model)
    bundle = load(f"{args.model}:latest")
    rt = Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name)

    def reference(s):
        return rt.run(*pad([s]))[0]

    seqs = sequences(args.requests, bundle.num_features, "lognormal", seed=0)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    configs = args.configs.split(",")
    for peer in {CONFIGS[c][0] for c in configs} - {"rnnserve"}:
        setup(peer)
    os.sched_setaffinity(0, cpu_set(args.client_cpus))  # the client; each server gets --server-cpus
    runs: dict[str, dict[str, list[dict]]] = {config: {} for config in configs}  # the table keeps CONFIGS' order
    for i, order in enumerate(orders(configs, args.rounds), 1):
        for config in order:
            print(f"round {i}/{args.rounds}: {config}: starting ...", flush=True)
            for c, r in measure(config, args, bundle, seqs, reference, concurrencies).items():
                runs[config].setdefault(c, []).append(r)
    return {config: {c: {**median_run(rs), "rounds_seq_s": [r["throughput_seq_s"] for r in rs]}
                     for c, rs in by_c.items()} for config, by_c in runs.items()}


def table(results: dict, concurrencies: list[int]) -> str:
    lines = ["| config | concurrency | seq/s | p50 ms | p99 ms | errors | server CPU µs/seq | mean batch "
             "| client padding efficiency | seq/s per round |", "|---|---|---|---|---|---|---|---|---|---|"]
    for config, by_c in results.items():
        for c in concurrencies:
            r = by_c.get(str(c))
            if r:
                batch = r.get("mean_batch_sequences")
                cells = [config, c, f"{r['throughput_seq_s']:,.0f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                         r["errors"], f"{r['server_cpu_us_per_seq']:,.0f}", "" if batch is None else f"{batch:.1f}",
                         f"{r['client_padding_efficiency']:.2f}",
                         ", ".join(f"{x:,.0f}" for x in r.get("rounds_seq_s", ()))]
                lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines)


def ratios(results: dict, c: int) -> str:
    """Per rnnserve configuration: its throughput over each peer's best configuration, and whether
    it is ahead of every peer configuration in throughput at an equal or lower p99."""
    peer_runs = {k: v[str(c)] for k, v in results.items() if not k.startswith("rnnserve") and str(c) in v}
    out = []
    for name, by_c in results.items():
        if not name.startswith("rnnserve") or str(c) not in by_c:
            continue
        ours = by_c[str(c)]
        for peer in ("triton", "mlserver"):
            runs = {k: v for k, v in peer_runs.items() if k.startswith(peer)}
            if not runs:
                continue
            best_name, best = max(runs.items(), key=lambda kv: kv[1]["throughput_seq_s"])
            out.append(f"- at concurrency {c}: {name} / best {peer} config ({best_name}) throughput = "
                       f"**{ours['throughput_seq_s'] / best['throughput_seq_s']:.2f}x**; "
                       f"p99 {ours['p99_ms']:.0f} ms vs {best['p99_ms']:.0f} ms")
        behind = [k for k, r in peer_runs.items()
                  if not (ours["throughput_seq_s"] > r["throughput_seq_s"] and ours["p99_ms"] <= r["p99_ms"])]
        if peer_runs:
            out.append(f"- at concurrency {c}: {name} ahead of every peer configuration in throughput at an equal "
                       f"or lower p99: " + ("**yes**" if not behind else f"**no** (not against {', '.join(behind)})"))
    return "\n".join(out)


def plot(results: dict, concurrencies: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    for config, by_c in results.items():
        cs = [c for c in concurrencies if str(c) in by_c]
        style = ({"linewidth": 3, "color": "black", "linestyle": "-" if config == "rnnserve" else "--"}
                 if config.startswith("rnnserve") else {"linewidth": 1.2})
        ax1.plot(cs, [by_c[str(c)]["throughput_seq_s"] for c in cs], marker="o", label=config, **style)
        ax2.plot(cs, [by_c[str(c)]["p99_ms"] for c in cs], marker="o", label=config, **style)
    ax1.set(ylabel="sequences / s", title="throughput (higher is better)")
    ax2.set(ylabel="p99 ms", title="p99 latency (lower is better)", yscale="log")
    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("concurrency (closed loop, 1 sequence per request)")
        ax.grid(alpha=0.3)
    handles, labels = ax1.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.83, 1))  # the legend beside the plots, off the lines
    fig.legend(handles, labels, fontsize=7, loc="center right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def markers(model: str) -> tuple[str, str]:
    """The default model's table lives between ``peers`` markers, any other's between ``peers:<model>``."""
    name = "peers" if model == DEFAULT_MODEL else f"peers:{model}"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_doc(doc: Path, body: str, model: str = DEFAULT_MODEL) -> None:
    write_between(doc, *markers(model), body)


def main(argv=None) -> int:
    server_default, client_default = default_cpus()
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-cpus", default=server_default, help=f"CPUs of every server (default {server_default})")
    p.add_argument("--client-cpus", default=client_default, help=f"CPUs of the client (default {client_default})")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--concurrency", default="8,32,64")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3, help="run every configuration this many times, each round "
                   "in a rotated order; the table gives each one's round of median throughput")
    p.add_argument("--requests", type=int, default=2048, help="distinct sequences cycled through")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--setup-only", action="store_true", help="create the peer venvs and exit")
    p.add_argument("--out", default="bench/results/peers.json")
    p.add_argument("--plot", help="default docs/img/peers.png (docs/img/peers-<model>.png for another model)")
    p.add_argument("--doc", default="docs/BENCHMARKS.md", help="'' to leave the docs alone")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.setup_only:
        for peer in ("triton", "mlserver"):
            print(setup(peer))
        return 0
    if args.plot is None:
        args.plot = "docs/img/peers.png" if args.model == DEFAULT_MODEL else f"docs/img/peers-{args.model}.png"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, concurrencies, ROOT / args.plot)
    options = (("model", args.model),) if args.model != DEFAULT_MODEL else ()
    command = ".venv/bin/python -m rnnserve.bench.peers " + " ".join(
        f"--{k} {v}" for k, v in (*options, ("concurrency", args.concurrency), ("duration", f"{args.duration:g}"),
                                  ("rounds", args.rounds)))
    body = "\n".join([
        f"One run, {time.strftime('%Y-%m-%d')}, this 2-core machine, every server pinned to CPU(s) "
        f"{args.server_cpus} and the client to CPU(s) {args.client_cpus}: `{command}`. Every configuration ran "
        f"once per round on a fresh server, each round in a rotated order; each row is its round of median "
        f"throughput (all rounds in the last column).",
        "", table(results, concurrencies), "",
        *(ratios(results, c) for c in concurrencies), "",
        f"![throughput and p99 per concurrency]({os.path.relpath(ROOT / args.plot, (ROOT / args.doc).parent)})",
    ])
    print("\n" + body)
    if args.doc:
        write_doc(ROOT / args.doc, body, args.model)
    return 0
