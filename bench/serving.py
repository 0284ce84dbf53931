"""Serving benchmark. One command, one run, side by side on this machine:

  (a) this service: whole sequences through the length-aware planner
  (h) the same with continuous step-level batching (policy=steps)
  (b) the same model with batching off (each request runs alone)
  (c) FIFO batching without length bucketing (one padded batch)
  (d) the in-process ONNX Runtime limit with the same planner (no server, no transport)
  (e) (a) with rnnserve metrics and drift monitoring off: their cost on the hot path
  (z) ``--baseline DIR``: the server of another checkout (an earlier commit), same settings
  (t) (a) with TLS on both ports (a throwaway CA made for the run): TLS's cost in server CPU
  (r) (a) with the inference category restricted to a key that every request carries
  (g) (a) with gRPC on grpc.aio in the worker's loop (``RNNSERVE_SERVER__GRPC_THREADS=0``) instead of
      the default thread-pool engine: what the engine saves per call

Every client speaks what its config needs: (t) TLS against the run's CA, (r) the key as a header
(gRPC metadata). ``--ca-cert`` / ``--client-cert`` / ``--client-key`` / ``--header`` (the options of
the load tests too, rnnserve.harness.access) apply to every other config, for servers given TLS or
restricted categories through the RNNSERVE_* environment.

Closed loop: ``--concurrency`` clients each send one sequence per request (``--per-request N``: N
consecutive sequences, padded to the longest, with their lengths) over gRPC (the lightest
client, the same for every server) for ``--duration`` seconds after a warm-up. Lengths follow the
lognormal mix (median 50, max 500). Padding efficiency comes from the server's own counters.

The client and the server run on different CPUs (``--server-cpus`` / ``--client-cpus``, pinned with
``taskset`` / ``sched_setaffinity``), so the client's own cost does not cap the server's figures.
Server CPU per sequence is user+system CPU of every server process over the measured window; the
model's own CPU per sequence is (d)'s, on the server's CPUs; their ratio is the headline.

    .venv/bin/rnnserve bench -- --duration 20 --concurrency 64
    .venv/bin/python -m rnnserve.bench.serving --configs a_service,z_baseline --baseline /tmp/main-before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from rnnserve.bundle.batch import pad
from rnnserve.harness import access as client_access
from rnnserve.harness.access import PLAIN, Access
from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import total
from rnnserve.loadtests import payloads
from rnnserve.loadtests.payloads import datatype

CONFIGS = {
    "a_service": {},
    "b_no_batching": {"RNNSERVE_BATCHING__ENABLED": "false"},
    "c_fifo_no_bucketing": {"RNNSERVE_BATCHING__BUCKETING": "none"},
    "e_no_metrics_no_drift": {"RNNSERVE_METRICS__ENABLED": "false", "RNNSERVE_DRIFT__ENABLED": "false"},
    "f_metrics_no_drift": {"RNNSERVE_DRIFT__ENABLED": "false"},
    "s_spinning_on": {"RNNSERVE_RUNTIME__ALLOW_SPINNING": "true"},
    "h_step_engine": {"RNNSERVE_BATCHING__POLICY": "steps"},
    "g_grpc_aio": {"RNNSERVE_SERVER__GRPC_THREADS": "0"},
    "t_tls": {},  # + the run's certificates (secured)
    "r_restricted": {"RNNSERVE_SERVER__RESTRICTED_API": "inference:x-api-key=bench-key"},
    "z_baseline": {},
}


def secured(name: str, access: Access, certs) -> tuple[dict[str, str], Access]:
    """The settings and client access of config ``name``: (t) TLS with ``certs`` (the run's throwaway
    CA, rnnserve.harness.certs), (r) the inference key as a header, any other ``access`` (the command
    line's)."""
    if name == "r_restricted":
        return {}, Access(headers={"x-api-key": "bench-key"})
    if name != "t_tls":
        return {}, access
    return {"RNNSERVE_SERVER__TLS_CERT": str(certs.server.cert),
            "RNNSERVE_SERVER__TLS_KEY": str(certs.server.key)}, Access(certs.ca)


def padded_length(t: int, shapes: str) -> int:
    """The time axis a client sends for a sequence of ``t`` steps: ``raw`` and ``raw+lengths`` send
    it as is; ``bucket:N`` pads up to a multiple of N; ``max:N`` pads every sequence to N."""
    kind, _, arg = shapes.partition(":")
    if kind in ("raw", "raw+lengths"):
        return t
    if kind == "bucket":
        return -(-t // int(arg)) * int(arg)
    if kind == "max":
        if t > int(arg):
            raise ValueError(f"sequence of {t} steps is longer than max:{arg}")
        return int(arg)
    raise ValueError(f"unknown shape policy {shapes!r}: raw, raw+lengths, bucket:N or max:N")


def infer_requests(model: str, seqs, shapes: str = "raw", per_request: int = 1) -> list:
    """One v2 gRPC request per sequence. ``raw`` sends ``input`` [1, T, F] alone (rnnserve reads the
    length from the shape); every other policy zero-pads to ``padded_length`` and sends the true
    length as ``lengths`` [1, 1] INT64, which keeps the outputs identical to the unpadded ones.
    ``per_request`` > 1: each request carries that many consecutive sequences, as a client that
    batches its own sequences sends them: ``input`` [N, T, F] zero-padded to the longest of them
    and ``lengths`` [N] INT64 (the server splits them by length again)."""
    from tritonclient.grpc import service_pb2 as pb

    if per_request > 1:
        return [batched_request(pb, model, group) for group in groups(seqs, per_request)]
    requests = []
    for s in seqs:
        t = s.shape[0]
        x = np.zeros((1, padded_length(t, shapes), *s.shape[1:]), s.dtype)
        x[0, :t] = s
        req = pb.ModelInferRequest(model_name=model)
        tensor = pb.ModelInferRequest.InferInputTensor
        req.inputs.append(tensor(name="input", datatype=datatype(s), shape=list(x.shape)))
        req.raw_input_contents.append(x.tobytes())
        if shapes != "raw":
            req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="lengths", datatype="INT64", shape=[1, 1]))
            req.raw_input_contents.append(np.array([[t]], np.int64).tobytes())
        req.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name="output"))
        requests.append(req)
    return requests


def model_sequences(bundle, n: int) -> list[np.ndarray]:
    """``n`` sequences of the lognormal mix (median 50, max 500) shaped as the bundle's signature takes
    them: float features or token ids."""
    sig = bundle.signature
    inputs = [t.metadata() for t in sig.inputs]
    return payloads.for_signature(n, inputs, sig.vocab_size, payloads.lengths(n, "lognormal", seed=0), seed=0)


def groups(seqs, per_request: int) -> list:
    """``seqs`` cut into consecutive groups of ``per_request`` (the last may be shorter): one per request."""
    return [seqs[i:i + per_request] for i in range(0, len(seqs), per_request)]


def batched_request(pb, model: str, group) -> object:
    x, lengths = pad(group, dtype=group[0].dtype)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype(x), shape=list(x.shape)))
    req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="lengths", datatype="INT64", shape=[len(group)]))
    req.raw_input_contents.extend([x.tobytes(), lengths.tobytes()])
    req.outputs.append(pb.ModelInferRequest.InferRequestedOutputTensor(name="output"))
    return req


def request_sequences(request) -> int:
    """How many sequences a v2 gRPC request carries (its ``input``'s batch axis)."""
    return int(request.inputs[0].shape[0])


async def closed_loop(grpc_url: str, requests: list, concurrency: int, duration: float, warmup: float,
                      stream: bool = False, access: Access = PLAIN):
    """``concurrency`` clients, each sending the next request as soon as its last one is answered.
    Works against any Open Inference Protocol v2 gRPC server. ``stream``: each client sends its
    requests on one bidirectional ``ModelStreamInfer`` stream (Triton's streaming API, what
    ``tritonclient.grpc``'s ``start_stream`` opens) instead of one unary ``ModelInfer`` call each.
    ``access``: TLS (one secure channel) and metadata (on every call, or once per stream)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    latencies: list[float] = []
    answered = 0  # sequences in the requests answered in the measured window
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    counts = [request_sequences(r) for r in requests]

    metadata = access.metadata or None
    async with access.grpc_channel(grpc_url, options=[("grpc.max_receive_message_length", 1 << 26)], aio=True) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)

        async def worker(k: int):
            nonlocal errors, answered
            i = k
            while (now := time.perf_counter()) < stop_at:
                try:
                    await stub.ModelInfer(requests[i % len(requests)], timeout=30, metadata=metadata)
                    done = time.perf_counter()
                    if now >= measure_from:
                        latencies.append(done - now)
                        answered += counts[i % len(requests)]
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        async def stream_worker(k: int):
            nonlocal errors, answered
            i = k
            call = stub.ModelStreamInfer(metadata=metadata)
            while (now := time.perf_counter()) < stop_at:
                await call.write(requests[i % len(requests)])
                reply = await call.read()
                done = time.perf_counter()
                if reply is grpc.aio.EOF or reply.error_message:
                    errors += 1
                    if reply is grpc.aio.EOF:
                        return
                elif now >= measure_from:
                    latencies.append(done - now)
                    answered += counts[i % len(requests)]
                i += concurrency
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:  # nothing is left in flight: the call ends cleanly
                pass

        await asyncio.gather(*((stream_worker if stream else worker)(k) for k in range(concurrency)))
    lat = np.array(latencies)
    return {
        "throughput_seq_s": answered / duration,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "requests": int(len(lat)),
        "sequences": answered,
        "errors": errors,
    }


def http_requests(model: str, seqs, transport: str, host: str, per_request: int = 1,
                  headers: dict[str, str] | None = None) -> list[bytes]:
    """Pre-encoded HTTP/1.1 keep-alive requests, ``per_request`` consecutive sequences each (the last
    request may carry fewer): ``http_json`` is ``POST /predict``, ``http_v2`` the v2 binary tensor
    extension exactly as ``tritonclient.http`` encodes it (several sequences: ``input`` [N, T, F]
    zero-padded to the longest and ``lengths`` [N] INT64). ``headers``: sent with each (a key)."""
    import json

    import tritonclient.http as thttp

    out = []
    for group in groups(seqs, per_request):
        if transport == "http_json":
            path, fields = "/predict", {"Content-Type": "application/json"}
            body = json.dumps({"sequences": [s.round(6).tolist() for s in group]}).encode()
        else:
            x, lengths = pad(group, dtype=group[0].dtype)
            inputs = [thttp.InferInput("input", list(x.shape), datatype(x))]
            inputs[0].set_data_from_numpy(x, binary_data=True)
            if len(group) > 1:
                inputs.append(thttp.InferInput("lengths", [len(group)], "INT64"))
                inputs[1].set_data_from_numpy(lengths, binary_data=True)
            body, header_length = thttp.InferenceServerClient.generate_request_body(
                inputs, [thttp.InferRequestedOutput("output", binary_data=True)])
            path = f"/v2/models/{model}/infer"
            fields = {"Content-Type": "application/octet-stream",
                      "Inference-Header-Content-Length": str(header_length)}
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in {**fields, **(headers or {})}.items())
        out.append(head.encode() + b"\r\n" + body)
    return out


def response_head(head: bytes) -> tuple[int, int]:
    """(status, Content-Length) of an HTTP/1.1 response head (through its blank line)."""
    length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    return int(head[9:12]), length


async def closed_loop_http(host: str, port: int, requests: list[bytes], concurrency: int, duration: float,
                           warmup: float, counts: list[int] | None = None, ssl=None) -> dict:
    """The HTTP twin of ``closed_loop``: one keep-alive connection per client, raw sockets, so the
    client's own cost per request stays small (reported as client CPU per request). ``counts``: the
    sequences in each request (default one each); ``ssl``: a client SSLContext (TLS)."""
    latencies: list[float] = []
    answered = 0  # sequences in the requests answered in the measured window
    counts = counts or [1] * len(requests)
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def worker(k: int):
        nonlocal errors, answered
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        i = k
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(requests[i % len(requests)])
                status, length = response_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                done = time.perf_counter()
                if status != 200:
                    errors += 1
                elif now >= measure_from:
                    latencies.append(done - now)
                    answered += counts[i % len(requests)]
                i += concurrency
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    lat = np.array(latencies)
    return {"throughput_seq_s": answered / duration, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "requests": int(len(lat)), "sequences": answered,
            "errors": errors}


def scrape(url: str, access: Access = PLAIN) -> dict[str, float]:
    request = urllib.request.Request(url + "/metrics", headers=access.headers)
    text = urllib.request.urlopen(request, timeout=5, context=access.ssl_context()).read().decode()
    out = {kind: total(text, "rnnserve_timesteps_total", kind=kind) for kind in ("real", "computed")}
    for name in ("rnnserve_batch_sequences_sum", "rnnserve_batch_sequences_count",
                 "rnnserve_model_cpu_seconds_total"):
        out[name] = total(text, name)
    return out


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU of the server and all its workers (the load generator is not included)."""
    import psutil

    root = psutil.Process(pid)
    seconds = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            seconds += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return seconds


class WindowCPU(threading.Thread):
    """Samples the server's and this process's CPU at the start and end of the measured window, and
    the server's own counters of the same window (``url``, where the server is rnnserve): sequences
    computed and the model's CPU (``rnnserve_model_cpu_seconds``), so the model's cost is read from
    the very batches served."""

    def __init__(self, pid: int, warmup: float, duration: float, url: str | None = None,
                 access: Access = PLAIN) -> None:
        super().__init__(daemon=True)
        self.pid, self.warmup, self.duration, self.url, self.access = pid, warmup, duration, url, access
        self.server = self.client = 0.0
        self.counters: dict[str, float] = {}

    def run(self) -> None:
        time.sleep(self.warmup)
        m0 = scrape(self.url, self.access) if self.url else {}
        s0, c0 = server_cpu_seconds(self.pid), time.process_time()
        time.sleep(self.duration)
        self.server, self.client = server_cpu_seconds(self.pid) - s0, time.process_time() - c0
        if self.url:
            m1 = scrape(self.url, self.access)
            self.counters = {k: m1[k] - m0[k] for k in m0}


def start_load(srv, model: str, seqs, transport: str, concurrency: int, duration: float, warmup: float,
               per_request: int = 1, access: Access = PLAIN):
    """The closed-loop client for ``transport`` against ``srv`` (a coroutine to run)."""
    if transport in ("grpc", "grpc_stream"):
        return closed_loop(srv.grpc_url, infer_requests(model, seqs, per_request=per_request), concurrency,
                           duration, warmup, stream=transport == "grpc_stream", access=access)
    encoded = http_requests(model, seqs, transport, f"127.0.0.1:{srv.http_port}", per_request, access.headers)
    counts = [len(group) for group in groups(seqs, per_request)]
    return closed_loop_http("127.0.0.1", srv.http_port, encoded, concurrency, duration, warmup, counts,
                            ssl=access.ssl_context())


# The folders a checkout of today's layout maps into the ``rnnserve`` namespace (pyproject's package-dir).
NAMESPACE_DIRS = {"models": "models", "export": "export", "service": "service", "bench": "bench",
                  "loadtests": "loadtests", "cli": "rnnserve/cli", "harness": "rnnserve/harness",
                  "bundle": "rnnserve/bundle", "__init__.py": "rnnserve/__init__.py"}


def baseline_import_path(checkout: Path) -> tuple[Path, str]:
    """(PYTHONPATH, CLI module) that make ``checkout``'s own code the server. A checkout of the
    earlier flat layout (``service/cli.py``) is importable as it is. Today's layout maps its folders
    into ``rnnserve.*`` through the editable install, which would serve *this* checkout's code: the
    baseline gets a folder of links that spells the same namespace out of its own files, first on
    its path (its working directory is that folder, so this checkout's ``rnnserve/`` is not on it)."""
    if not (checkout / "rnnserve" / "cli").is_dir():
        return checkout, "service.cli"
    import hashlib
    import tempfile

    root = Path(tempfile.gettempdir()) / f"rnnserve-baseline-{hashlib.sha1(str(checkout).encode()).hexdigest()[:10]}"
    package = root / "rnnserve"
    package.mkdir(parents=True, exist_ok=True)
    for name, target in NAMESPACE_DIRS.items():
        link = package / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if (checkout / target).exists():  # an older checkout lacks the newer folders
            link.symlink_to(checkout / target)
    return root, "rnnserve.cli"


def baseline_server(checkout: str, entry: str | None = None) -> dict:
    """``ServerProcess`` arguments that serve ``checkout``'s own code (``baseline_import_path``);
    ``entry``: its CLI module, where not the default."""
    path, default_entry = baseline_import_path(Path(checkout).resolve())
    return {"env": {**os.environ, "PYTHONPATH": str(path)}, "cwd": path,
            "command": [sys.executable, "-m", entry or default_entry, "serve"]}


def served(model: str, name: str, seqs, args) -> dict:
    security, access = secured(name, args.access, args.certs)
    settings = {"RNNSERVE_BATCHING__MAX_BATCH_SIZE": str(args.max_batch),
                "RNNSERVE_RUNTIME__INTRA_OP_THREADS": str(len(cpu_set(args.server_cpus))), **CONFIGS[name],
                **security}
    extra: dict = {}
    if name == "z_baseline":
        if not args.baseline:
            raise SystemExit("z_baseline needs --baseline DIR (a checkout of the commit to compare with)")
        if args.baseline_version:  # an older checkout may not read today's bundle format
            settings["RNNSERVE_MODEL__VERSION"] = args.baseline_version
        extra = baseline_server(args.baseline, args.baseline_entry)
    with ServerProcess(model, settings, cpus=args.server_cpus, access=access, **extra) as srv:
        window = WindowCPU(srv.proc.pid, args.warmup, args.duration, srv.url, access)
        load = start_load(srv, model, seqs, args.transport, args.concurrency, args.duration, args.warmup,
                          args.per_request, access)
        window.start()
        result = asyncio.run(load)
        window.join()
    answered = max(result["sequences"], 1)
    result["server_cpu_us_per_seq"] = window.server / answered * 1e6
    result["client_cpu_us_per_req"] = window.client / max(result["requests"], 1) * 1e6
    # the server's own counters over the measured window (all None with its metrics off)
    counts = window.counters
    sequences_run, model_cpu = counts["rnnserve_batch_sequences_sum"], counts["rnnserve_model_cpu_seconds_total"]
    batches, computed = counts["rnnserve_batch_sequences_count"], counts["computed"]
    # the model's CPU per sequence in the same window and batches (None also for a baseline server
    # older than the counter); with it, server CPU / model CPU needs no second run
    result["served_model_cpu_us_per_seq"] = model_cpu / sequences_run * 1e6 if sequences_run and model_cpu else None
    result["padding_efficiency"] = counts["real"] / computed if computed else None
    result["mean_batch_sequences"] = sequences_run / batches if batches else None
    return result


def cpu_set(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def in_process_limit(model: str, seqs, args, threads: int = 0) -> dict:
    """The model alone, on the server's CPUs, with the serving planner over batches of --max-batch;
    ``threads`` intra-op threads (0: one per server CPU)."""
    from rnnserve.bundle.manifest import load
    from rnnserve.service.batching.planner import padding_efficiency, plan
    from rnnserve.service.runtime.onnx import Runtime
    from rnnserve.service.settings import BatchingSettings

    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpu_set(args.server_cpus))  # ONNX Runtime's threads inherit it
    try:
        bundle = load(f"{model}:latest")
        rt = Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name,
                     intra_op_threads=threads or len(cpu_set(args.server_cpus)))  # the serving defaults (spinning off)
        cost = rt.calibrate(bundle.signature.random_batch, args.max_batch)
        floor = BatchingSettings().min_bucket_efficiency
        lengths = np.array([len(s) for s in seqs])
        done, real, computed = 0, 0, 0
        start, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - start < args.duration:
            for lo in range(0, len(seqs) - args.max_batch + 1, args.max_batch):
                batch_len = lengths[lo : lo + args.max_batch]
                buckets = plan(batch_len, cost, args.max_batch, floor)
                for b in buckets:
                    rt.run(*pad([seqs[lo + i] for i in b], dtype=seqs[0].dtype))
                r, c = padding_efficiency(batch_len, buckets)
                real, computed, done = real + r, computed + c, done + len(batch_len)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    finally:
        os.sched_setaffinity(0, mine)
    return {"throughput_seq_s": done / elapsed, "p50_ms": None, "p99_ms": None,
            "padding_efficiency": real / computed, "mean_batch_sequences": args.max_batch,
            "model_cpu_us_per_seq": cpu / done * 1e6}


def default_cpus() -> tuple[str, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("the benchmark needs 2 CPUs: one for the server, one for the client")
    half = max(1, len(cpus) // 2)
    server, client = cpus[:half], cpus[half:]
    return ",".join(map(str, server)), ",".join(map(str, client))


def main(argv=None) -> int:
    server_default, client_default = default_cpus()
    p = argparse.ArgumentParser(prog="rnnserve bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--transport", choices=["grpc", "grpc_stream", "http_v2", "http_json"], default="grpc",
                   help="one sequence per request over v2 gRPC (unary ModelInfer, or grpc_stream: one "
                   "ModelStreamInfer stream per client), v2 HTTP (binary tensors) or the JSON /predict")
    p.add_argument("--per-request", dest="per_request", type=int, default=1,
                   help="sequences each request carries (a client that batches its own: padded to the longest "
                   "of them, with their lengths); server CPU and throughput are still per sequence")
    p.add_argument("--max-batch", dest="max_batch", type=int, default=64)
    p.add_argument("--intra-op-threads", type=int, default=0, help="(d)'s ONNX Runtime threads (default: one per "
                   "server CPU); run several (d) at once with 1 to see how workers scale against threads")
    p.add_argument("--requests", type=int, default=2048, help="distinct sequences cycled through")
    p.add_argument("--configs", default="a_service,b_no_batching,c_fifo_no_bucketing,d_in_process_limit,"
                   "e_no_metrics_no_drift")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the configs this many times, interleaved; report the median of each")
    p.add_argument("--server-cpus", default=server_default, help=f"CPUs of the server (default {server_default})")
    p.add_argument("--client-cpus", default=client_default, help=f"CPUs of this client (default {client_default})")
    p.add_argument("--baseline", help="checkout (git worktree) whose own server z_baseline runs")
    p.add_argument("--baseline-entry", help="its CLI module (default: rnnserve.cli, or service.cli for the "
                   "earlier flat layout)")
    p.add_argument("--baseline-version", help="bundle version the baseline serves (default: latest)")
    p.add_argument("--out", default="bench/results/serving.json")
    client_access.add_arguments(p)
    args = p.parse_args([a for a in (sys.argv[1:] if argv is None else argv) if a != "--"])
    if args.per_request < 1:
        p.error("--per-request must be at least 1")
    args.access = client_access.from_args(args)
    args.certs = None
    if "t_tls" in args.configs.split(","):
        import tempfile

        from rnnserve.harness.certs import make_certs

        args.certs = make_certs(Path(tempfile.mkdtemp(prefix="rnnserve-bench-certs-")))
    from rnnserve.bundle.manifest import load

    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    seqs = model_sequences(load(f"{args.model}:latest"), args.requests)
    runs: dict[str, list[dict]] = {}
    for round_ in range(1, args.rounds + 1):
        for name in args.configs.split(","):
            print(f"round {round_}: running {name} ...", flush=True)
            if name == "d_in_process_limit":
                run = in_process_limit(args.model, seqs, args, args.intra_op_threads)
            else:
                run = served(args.model, name, seqs, args)
            runs.setdefault(name, []).append(run)
            print(f"  {json.dumps(run)}", flush=True)
    results = {name: median_run(rs) for name, rs in runs.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    recorded = {k: v for k, v in vars(args).items() if k not in ("access", "certs")}
    Path(args.out).write_text(json.dumps({"args": recorded, "results": results, "runs": runs}, indent=1))
    print(report(results, runs, args))
    return 0


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput (the upper middle of an even count): one whole run, so its p99,
    CPU and batch figures stay the ones measured beside that throughput."""
    return sorted(runs, key=lambda r: r["throughput_seq_s"])[len(runs) // 2]


def report(results: dict, runs: dict, args) -> str:
    per = getattr(args, "per_request", 1)
    lines = [f"server on CPUs {args.server_cpus}, client on CPUs {args.client_cpus}; concurrency {args.concurrency}; "
             f"transport {args.transport}" + (f", {per} sequences per request" if per > 1 else ""),
             "", "| config | seq/s | p50 ms | p99 ms | padding efficiency | mean batch | server CPU µs/seq | "
             "client CPU µs/req |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in
                 ("throughput_seq_s", "p50_ms", "p99_ms", "padding_efficiency", "mean_batch_sequences",
                  "server_cpu_us_per_seq", "client_cpu_us_per_req")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    model_cpu = results.get("d_in_process_limit", {}).get("model_cpu_us_per_seq")
    if model_cpu:
        lines.append(f"\nmodel CPU per sequence (d): {model_cpu:.0f} us")
        for name, r in results.items():
            if "server_cpu_us_per_seq" in r:
                lines.append(f"{name}: server CPU / model CPU = {r['server_cpu_us_per_seq'] / model_cpu:.2f}; "
                             f"throughput / in-process limit = "
                             f"{r['throughput_seq_s'] / results['d_in_process_limit']['throughput_seq_s']:.2f}")
    for name, rs in runs.items():  # the headline that needs no second run: same window, same batches
        measured = [r for r in rs if r.get("served_model_cpu_us_per_seq")]
        if measured:
            lines.append(f"{name}: server CPU / the model's CPU in the same server and window = "
                         + ", ".join(f"{r['server_cpu_us_per_seq'] / r['served_model_cpu_us_per_seq']:.2f}"
                                     for r in measured)
                         + " (per round); model "
                         + ", ".join(f"{r['served_model_cpu_us_per_seq']:.0f}" for r in measured) + " us/seq")
    if "a_service" in results and "b_no_batching" in results:
        ratio = results["a_service"]["throughput_seq_s"] / results["b_no_batching"]["throughput_seq_s"]
        lines.append(f"(a)/(b) throughput: {ratio:.2f}x")
    if "a_service" in results and "z_baseline" in results:
        a, z = results["a_service"], results["z_baseline"]
        lines.append(f"(a)/(z) throughput: {a['throughput_seq_s'] / z['throughput_seq_s']:.2f}x; p99 "
                     f"{a['p99_ms']:.0f} vs {z['p99_ms']:.0f} ms; p50 {a['p50_ms']:.0f} vs {z['p50_ms']:.0f} ms")
    for name, what in (("t_tls", "TLS"), ("r_restricted", "a restricted inference category")):
        if "a_service" in runs and name in runs:  # the cost of security in server CPU, side by side
            on = [r["server_cpu_us_per_seq"] for r in runs[name]]
            off = [r["server_cpu_us_per_seq"] for r in runs["a_service"]]
            lines.append(f"({name[0]}) vs (a), {what} on vs off: server CPU per sequence (per round) "
                         + ", ".join(f"{x:.0f}" for x in on) + " vs " + ", ".join(f"{y:.0f}" for y in off)
                         + f" us; medians {np.median(on) / np.median(off) - 1:+.1%}; throughput "
                         f"{results[name]['throughput_seq_s'] / results['a_service']['throughput_seq_s']:.3f}x")
    if "a_service" in results and "e_no_metrics_no_drift" in results:
        ratio = results["a_service"]["throughput_seq_s"] / results["e_no_metrics_no_drift"]["throughput_seq_s"]
        lines.append(f"(a)/(e) throughput, observability on/off: {ratio:.3f}")
        cpu = {k: sorted(r["server_cpu_us_per_seq"] for r in runs[k]) for k in ("a_service", "e_no_metrics_no_drift")}
        on, off = (v[len(v) // 2] for v in cpu.values())
        lines.append(f"server CPU per sequence, median: on {on:.0f} us, off {off:.0f} us: +{on / off - 1:.1%}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
