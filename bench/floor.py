"""The transport floor: what a server that does nothing but answer costs per request, in Python.

    .venv/bin/python -m rnnserve.bench.floor --duration 10

Each floor server answers the v2 inference request of the serving benchmark with a fixed answer of the
served model's output size and nothing else (no model, no batching, no validation, no metrics):

  grpc_aio   grpc.aio server, unary ``ModelInfer`` (rnnserve's gRPC engine with RNNSERVE_SERVER__GRPC_THREADS=0)
  grpclib    grpclib's server (pure-Python HTTP/2 on asyncio, no grpc C core), unary ``ModelInfer``
  grpc_aio_stream  the same grpc.aio server, each client on one ``ModelStreamInfer`` stream (Triton's streaming
             API), one fixed answer per request message
  grpc_sync  grpc's thread-pool server, unary ``ModelInfer``
  grpc_sync_loop  the same, each answer awaited from a coroutine on an asyncio loop in another thread
             (``run_coroutine_threadsafe``): the bridge a thread-pool front end needs to an asyncio core
             (what rnnserve's default gRPC engine runs on, ``service/transports/grpc_threads.py``)
  http       uvicorn with httptools and a bare ASGI app, ``POST /v2/models/<m>/infer`` (what BentoML
             runs rnnserve's HTTP routes on, without BentoML's and Starlette's layers)

Placement and client as in ``rnnserve.bench.serving``: the server pinned to ``--server-cpus``, the
closed-loop client (the same one, the same requests: one sequence per request, lognormal lengths) on
``--client-cpus``; server CPU from /proc over the measured window. Beside them, the model's own CPU
per sequence on the same CPUs (the serving benchmark's (d)), so the table says the lowest server
CPU / model CPU any server on that transport can reach here: 1 + floor / model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np

from rnnserve.bench.serving import (
    WindowCPU,
    closed_loop,
    closed_loop_http,
    cpu_set,
    default_cpus,
    http_requests,
    in_process_limit,
    infer_requests,
)
from rnnserve.harness.launch import ManagedProcess, free_port
from rnnserve.loadtests.payloads import sequences

SERVERS = ("grpc_aio", "grpclib", "grpc_aio_stream", "grpc_sync", "grpc_sync_loop", "http")


# ---- the floor servers (run in their own process: python -m rnnserve.bench.floor --serve ...) ------

def fixed_response(model: str, outputs: int):
    from tritonclient.grpc import service_pb2 as pb

    reply = pb.ModelInferResponse(model_name=model, id="")
    out = reply.outputs.add()
    out.name, out.datatype = "output", "FP32"
    out.shape.extend([1, outputs])
    reply.raw_output_contents.append(np.zeros(outputs, np.float32).tobytes())
    return reply


def servicer(model: str, outputs: int, aio: bool, loop=None):
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    reply = fixed_response(model, outputs)
    ready = pb.ServerReadyResponse(ready=True)

    if aio:
        class Floor(pb_grpc.GRPCInferenceServiceServicer):
            async def ModelInfer(self, request, context):  # noqa: N802 - the v2 service's names
                return reply

            async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
                stream_reply = pb.ModelStreamInferResponse(infer_response=reply)
                async for _ in request_iterator:
                    yield stream_reply

            async def ServerReady(self, request, context):  # noqa: N802
                return ready
    else:
        if loop is None:
            def infer():
                return reply
        else:  # each answer comes from a coroutine on an event loop in another thread
            async def answer():
                return reply

            def infer():
                return asyncio.run_coroutine_threadsafe(answer(), loop).result()

        class Floor(pb_grpc.GRPCInferenceServiceServicer):
            def ModelInfer(self, request, context):  # noqa: N802
                return infer()

            def ServerReady(self, request, context):  # noqa: N802
                return ready
    return Floor(), pb_grpc.add_GRPCInferenceServiceServicer_to_server


def serve_grpc_aio(port: int, model: str, outputs: int) -> None:
    import grpc

    async def main() -> None:
        server = grpc.aio.server()
        impl, add = servicer(model, outputs, aio=True)
        add(impl, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_grpclib(port: int, model: str, outputs: int) -> None:
    """grpclib: a gRPC server in Python on asyncio and the h2 HTTP/2 library, not grpc's C core."""
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server
    from tritonclient.grpc import service_pb2 as pb

    def answering(reply):
        async def handler(stream):
            await stream.recv_message()
            await stream.send_message(reply)
        return handler

    methods = {"ModelInfer": (fixed_response(model, outputs), pb.ModelInferRequest),
               "ServerReady": (pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest)}

    class Floor:
        def __mapping__(self):
            return {f"/inference.GRPCInferenceService/{name}": Handler(answering(reply), Cardinality.UNARY_UNARY,
                                                                       request, type(reply))
                    for name, (reply, request) in methods.items()}

    async def main() -> None:
        server = Server([Floor()])
        await server.start("127.0.0.1", port)
        await server.wait_closed()

    asyncio.run(main())


def serve_grpc_sync(port: int, model: str, outputs: int, threads: int, bridge: bool = False) -> None:
    from concurrent import futures

    import grpc

    loop = None
    if bridge:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    impl, add = servicer(model, outputs, aio=False, loop=loop)
    add(impl, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_http(port: int, model: str, outputs: int) -> None:
    import uvicorn

    body = json.dumps({"model_name": model, "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, outputs],
                                                        "parameters": {"binary_data_size": 4 * outputs}}]}).encode()
    content = body + np.zeros(outputs, np.float32).tobytes()
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(content)).encode()),
               (b"inference-header-content-length", str(len(body)).encode())]
    infer_path = f"/v2/models/{model}/infer"

    async def app(scope, receive, send):
        if scope["type"] != "http":  # lifespan
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        more = True
        while more:  # the whole body, as any server must read it
            message = await receive()
            more = message.get("more_body", False)
        if scope["path"] == infer_path:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        else:  # readiness and anything else
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="asyncio", log_level="warning",
                access_log=False)


class FloorServer(ManagedProcess):
    """One floor server on a free loopback port, pinned to ``cpus``."""

    def __init__(self, kind: str, model: str, outputs: int, cpus: str, threads: int = 64) -> None:
        self.kind, self.port = kind, free_port()
        self.grpc_url = f"127.0.0.1:{self.port}"
        cmd = ["taskset", "-c", cpus, sys.executable, "-m", "rnnserve.bench.floor", "--serve", kind,
               "--port", str(self.port), "--model", model, "--outputs", str(outputs), "--threads", str(threads)]
        super().__init__(cmd, dict(os.environ), f"http://127.0.0.1:{self.port}/v2/health/ready", name=f"floor-{kind}")

    def answers_ready(self) -> bool:
        if self.kind == "http":
            return super().answers_ready()
        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.grpc_url) as ch:
            try:
                return pb_grpc.GRPCInferenceServiceStub(ch).ServerReady(pb.ServerReadyRequest(), timeout=1).ready
            except grpc.RpcError:
                return False


# ---- the measurement ------------------------------------------------------------------------------

def measure(kind: str, model: str, outputs: int, seqs, args) -> dict:
    with FloorServer(kind, model, outputs, args.server_cpus, args.threads) as srv:
        if kind == "http":
            load = closed_loop_http("127.0.0.1", srv.port, http_requests(model, seqs, "http_v2", srv.grpc_url),
                                    args.concurrency, args.duration, args.warmup)
        else:
            load = closed_loop(srv.grpc_url, infer_requests(model, seqs), args.concurrency, args.duration, args.warmup,
                               stream=kind == "grpc_aio_stream")
        window = WindowCPU(srv.proc.pid, args.warmup, args.duration)  # no rnnserve counters to read
        window.start()
        result = asyncio.run(load)
        window.join()
    answered = max(result["requests"], 1)
    result["server_cpu_us_per_req"] = window.server / answered * 1e6
    result["client_cpu_us_per_req"] = window.client / answered * 1e6
    return result


def report(runs: dict[str, list[dict]], model_us: float) -> str:
    """Medians over the rounds, every round's server CPU in brackets."""
    lines = ["| floor server | requests/s | p50 / p99 ms | server CPU µs per request | lowest server / model "
             "(1 + floor / model) |", "|---|---|---|---|---|"]
    for kind, rs in runs.items():
        r = sorted(rs, key=lambda x: x["server_cpu_us_per_req"])[len(rs) // 2]
        cpus = ", ".join(f"{x['server_cpu_us_per_req']:,.0f}" for x in rs)
        each = f" ({cpus})" if len(rs) > 1 else ""
        lines.append(f"| {kind} | {r['throughput_seq_s']:,.0f} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | "
                     f"{r['server_cpu_us_per_req']:,.0f}{each} | {1 + r['server_cpu_us_per_req'] / model_us:.2f} |")
    return "\n".join(lines) + f"\n\nThe model's own CPU per sequence on the same CPUs, batched: {model_us:.0f} µs."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1, help="rounds, the servers interleaved; medians reported")
    p.add_argument("--requests", type=int, default=2048, help="distinct sequences cycled through")
    p.add_argument("--max-batch", dest="max_batch", type=int, default=64, help="for the model's own CPU")
    p.add_argument("--threads", type=int, default=64, help="the thread pool of grpc_sync and grpc_sync_loop "
                   "(a handler that waits for its answer holds a thread: as many as --concurrency)")
    p.add_argument("--server-cpus", help="CPUs of the floor servers (default: the first half)")
    p.add_argument("--client-cpus", help="CPUs of the client (default: the second half)")
    p.add_argument("--out", default="bench/results/floor.json")
    p.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)  # a floor server's own process
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--outputs", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve:
        if args.serve == "grpclib":
            serve_grpclib(args.port, args.model, args.outputs)
        elif args.serve in ("grpc_aio", "grpc_aio_stream"):
            serve_grpc_aio(args.port, args.model, args.outputs)
        elif args.serve in ("grpc_sync", "grpc_sync_loop"):
            serve_grpc_sync(args.port, args.model, args.outputs, args.threads, bridge=args.serve == "grpc_sync_loop")
        else:
            serve_http(args.port, args.model, args.outputs)
        return 0
    from rnnserve.bundle.manifest import load

    server_default, client_default = default_cpus()
    args.server_cpus, args.client_cpus = args.server_cpus or server_default, args.client_cpus or client_default
    bundle = load(f"{args.model}:latest")
    outputs = bundle.manifest["outputs"][0]["shape"][1]
    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    seqs = sequences(args.requests, bundle.num_features, "lognormal", seed=0)
    model_us = in_process_limit(args.model, seqs, args)["model_cpu_us_per_seq"]
    runs: dict[str, list[dict]] = {}
    for round_ in range(1, args.rounds + 1):
        for kind in args.servers.split(","):
            print(f"round {round_}: running {kind} ...", flush=True)
            runs.setdefault(kind, []).append(measure(kind, args.model, outputs, seqs, args))
            print(f"  {json.dumps(runs[kind][-1])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "model_cpu_us_per_seq": model_us, "runs": runs},
                                         indent=1))
    print(report(runs, model_us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
