"""Locust load test for rnnserve: HTTP JSON, OIP v2 HTTP and OIP v2 gRPC users, and live streams.

Payloads follow the served model's signature (v2 metadata ``/v2/models/{name}``: float features or
token ids; the model config's ``vocab_size``) and, by default, the bundle's own reference length
distribution (``--length-mix reference``, read from the local BentoML model store; lognormal where the
bundle is not there); transport weights and the load profile are options:

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:3000 \\
        --grpc-target 127.0.0.1:8001 --model-name vowels --length-mix lognormal \\
        --load-profile step --peak-users 64 --duration 60 --json-weight 1 --v2-weight 1 --grpc-weight 1

Streams (``--stream-weight``): each StreamUser is one live feed: it starts a stream (Triton's sequence
parameters over gRPC), sends a chunk of 1..20 timesteps (``--chunk-mix``) every ``--chunk-interval``
seconds (jittered, a live feed's think time), ends it after 10-50 chunks and starts the next one.
Each chunk is a Locust request named ``stream chunk`` (the END chunk ``stream end``).

A server with TLS or restricted API categories (docs/OPERATIONS.md, "Security"): ``--host https://...``
with ``--ca-cert ca.crt`` (its CA; both transports speak TLS), ``--client-cert`` / ``--client-key``
(mutual TLS) and ``--header KEY=VALUE`` (sent with every request, as gRPC metadata too), the same
options as the benchmarks (rnnserve.harness.access).

Generation (``--generate-weight``, a model served with ``RNNSERVE_BATCHING__POLICY=steps``): each
GenerateUser posts ``--prompt`` to ``/v2/models/{name}/generate_stream`` with ``--max-tokens`` and reads
the server-sent events; Locust records ``generate_stream`` (to the headers, which the server sends
with the first token) and ``generate complete`` (the whole completion) per request.

``make loadtest`` wraps this (server start, CSV/HTML reports, SLO check).
"""

from __future__ import annotations

import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to Locust's gevent loop

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import HttpUser, LoadTestShape, User, between, events, task  # noqa: E402

from rnnserve.bundle.batch import pad  # noqa: E402
from rnnserve.harness import access as client_access  # noqa: E402
from rnnserve.loadtests.payloads import datatype  # noqa: E402

POOL: list[np.ndarray] = []
RNG = np.random.default_rng(0)
ACCESS = [client_access.PLAIN]  # set from the options at init


def http_client_options(client) -> None:
    """An HttpUser's session (requests) with the TLS files and headers of ``ACCESS``."""
    access = ACCESS[0]
    if access.tls:
        client.verify = str(access.ca)
        if access.cert:
            client.cert = (str(access.cert), str(access.key))
    client.headers.update(access.headers)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model-name", default="vowels", help="served model name")
    parser.add_argument("--grpc-target", default="127.0.0.1:8001", help="host:port of the gRPC endpoint")
    parser.add_argument("--length-mix", choices=["reference", "lognormal", "uniform", "bimodal"], default="reference",
                        help="reference: the bundle's reference.json lengths (lognormal when it is not in the store)")
    parser.add_argument("--median-length", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=500)
    parser.add_argument("--sequences-per-request", type=int, default=1)
    parser.add_argument("--json-weight", type=int, default=1)
    parser.add_argument("--v2-weight", type=int, default=1)
    parser.add_argument("--grpc-weight", type=int, default=1)
    parser.add_argument("--stream-weight", type=int, default=0, help="StreamUser weight (live streams)")
    parser.add_argument("--chunk-mix", default="1,2,5,10,20", help="timesteps per stream chunk, drawn uniformly")
    parser.add_argument("--chunk-interval", type=float, default=1.0, help="seconds between chunks of a stream")
    parser.add_argument("--generate-weight", type=int, default=0, help="GenerateUser weight (generate_stream)")
    parser.add_argument("--prompt", default="The ", help="generation prompt (in the model's vocabulary)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--load-profile", choices=["steady", "step", "spike"], default="steady")
    parser.add_argument("--peak-users", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, for every profile")
    client_access.add_arguments(parser)


@events.init.add_listener
def _setup(environment, **_kw) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    JsonUser.weight, V2HttpUser.weight, GrpcUser.weight = opts.json_weight, opts.v2_weight, opts.grpc_weight
    StreamUser.weight = opts.stream_weight
    GenerateUser.weight = opts.generate_weight
    ACCESS[0] = client_access.from_args(opts)


@events.test_start.add_listener
def _payloads(environment, **_kw) -> None:
    import httpx

    from rnnserve.loadtests.payloads import for_signature, lengths, reference_lengths

    opts, access = environment.parsed_options, ACCESS[0]
    base = f"{environment.host}/v2/models/{opts.model_name}"
    fetch = {"timeout": 10, "headers": access.headers, "verify": access.ssl_context() or True}
    meta = httpx.get(base, **fetch).json()
    vocab = httpx.get(f"{base}/config", **fetch).json()["parameters"].get("vocab_size", {}).get("string_value")
    mix = opts.length_mix
    if mix == "reference":
        try:
            from rnnserve.bundle.manifest import BundleError, load

            lens = reference_lengths(load(f"{opts.model_name}:latest").read_json("reference.json"), 1024,
                                     top=opts.max_length)
        except (BundleError, OSError, KeyError) as exc:
            print(f"[locust] no reference lengths for {opts.model_name} ({exc}): lognormal mix instead")
            mix = "lognormal"
    if mix != "reference":
        lens = lengths(1024, mix, seed=0, median=opts.median_length, top=opts.max_length)
    POOL[:] = for_signature(1024, meta["inputs"], int(vocab) if vocab else None, lens)


def batch(n: int) -> list[np.ndarray]:
    return [POOL[i] for i in RNG.integers(0, len(POOL), n)]


class JsonUser(HttpUser):
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        http_client_options(self.client)

    @task
    def predict(self) -> None:
        seqs = batch(self.environment.parsed_options.sequences_per_request)
        with self.client.post("/predict", json={"sequences": [s.tolist() for s in seqs]}, name="POST /predict",
                              catch_response=True) as r:
            if r.status_code != 200 or len(r.json().get("predictions", ())) != len(seqs):
                r.failure(f"{r.status_code}: {r.text[:200]}")


class V2HttpUser(HttpUser):
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        http_client_options(self.client)

    @task
    def infer(self) -> None:
        opts = self.environment.parsed_options
        seqs = batch(opts.sequences_per_request)
        x, lengths = pad(seqs, dtype=seqs[0].dtype)
        payload = {"inputs": [
            {"name": "input", "datatype": datatype(x), "shape": list(x.shape), "data": x.reshape(-1).tolist()},
            {"name": "lengths", "datatype": "INT64", "shape": [len(x)], "data": lengths.tolist()},
        ], "outputs": [{"name": "label"}]}
        with self.client.post(f"/v2/models/{opts.model_name}/infer", json=payload, name="POST /v2 infer",
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")


class GrpcUser(User):
    """Reports each ModelInfer call to Locust as a request event."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.pb = service_pb2
        self.channel = ACCESS[0].grpc_channel(self.environment.parsed_options.grpc_target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def model_infer(self) -> None:
        pb, opts = self.pb, self.environment.parsed_options
        seqs = batch(opts.sequences_per_request)
        x, lengths = pad(seqs, dtype=seqs[0].dtype)
        req = pb.ModelInferRequest(model_name=opts.model_name)
        tensor = pb.ModelInferRequest.InferInputTensor
        req.inputs.append(tensor(name="input", datatype=datatype(x), shape=list(x.shape)))
        req.inputs.append(tensor(name="lengths", datatype="INT64", shape=[len(x)]))
        req.raw_input_contents.extend([x.tobytes(), lengths.tobytes()])
        start = time.perf_counter()
        exc, size = None, 0
        try:
            size = self.stub.ModelInfer(req, timeout=30, metadata=ACCESS[0].metadata).ByteSize()
        except grpc.RpcError as e:
            exc = e
        self.environment.events.request.fire(
            request_type="grpc", name="ModelInfer", response_time=(time.perf_counter() - start) * 1000,
            response_length=size, exception=exc, context={},
        )


class StreamUser(User):
    """One live stream at a time over gRPC ModelInfer with sequence_id / sequence_start / sequence_end."""

    ids = iter(range(1, 2**62))

    def wait_time(self) -> float:
        return self.environment.parsed_options.chunk_interval * float(RNG.uniform(0.5, 1.5))

    def on_start(self) -> None:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.pb = service_pb2
        self.channel = ACCESS[0].grpc_channel(self.environment.parsed_options.grpc_target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.sizes = [int(v) for v in self.environment.parsed_options.chunk_mix.split(",")]
        self._next_stream()

    def _next_stream(self) -> None:
        self.sid, self.sent, self.length = next(StreamUser.ids), 0, int(RNG.integers(10, 51))

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def chunk(self) -> None:
        pb, opts = self.pb, self.environment.parsed_options
        source = POOL[int(RNG.integers(len(POOL)))]
        x = np.ascontiguousarray(source[: int(RNG.choice(self.sizes))])
        start, end = self.sent == 0, self.sent + 1 >= self.length
        req = pb.ModelInferRequest(model_name=opts.model_name)
        tensor = pb.ModelInferRequest.InferInputTensor
        req.inputs.append(tensor(name="input", datatype=datatype(x), shape=[1, *x.shape]))
        req.raw_input_contents.append(x.tobytes())
        req.parameters["sequence_id"].int64_param = self.sid
        req.parameters["sequence_start"].bool_param = start
        req.parameters["sequence_end"].bool_param = end
        t0 = time.perf_counter()
        exc, size = None, 0
        try:
            size = self.stub.ModelInfer(req, timeout=30, metadata=ACCESS[0].metadata).ByteSize()
            self.sent += 1
        except grpc.RpcError as e:
            exc = e
            self.sent = 0  # the stream is lost to this client (or was never started): start over
        self.environment.events.request.fire(
            request_type="grpc", name="stream end" if end else "stream chunk",
            response_time=(time.perf_counter() - t0) * 1000, response_length=size, exception=exc, context={},
        )
        if end and exc is None:
            self._next_stream()


class GenerateUser(HttpUser):
    """One generation at a time over Triton's ``generate_stream`` (server-sent events), seeded per call."""

    wait_time = between(0.0, 0.01)
    seeds = iter(range(2**62))

    def on_start(self) -> None:
        http_client_options(self.client)

    @task
    def generate_stream(self) -> None:
        """Locust times ``generate_stream`` to the response's headers, which the server sends with the
        first token: it is the time to first token; ``generate complete`` is the whole completion."""
        opts = self.environment.parsed_options
        body = {"text_input": opts.prompt, "parameters": {"max_tokens": opts.max_tokens, "seed": next(self.seeds)}}
        start, events, exc = time.perf_counter(), 0, None
        with self.client.post(f"/v2/models/{opts.model_name}/generate_stream", json=body, stream=True,
                              name="generate_stream", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            try:
                for line in r.iter_lines():
                    if line:
                        events += 1
                        if b'"error"' in line:
                            exc = RuntimeError(line.decode()[:200])
            except Exception as e:  # the connection broke mid-stream
                exc = e
            if exc is None and not events:
                exc = RuntimeError("no server-sent events")
        self.environment.events.request.fire(
            request_type="SSE", name="generate complete", response_time=(time.perf_counter() - start) * 1000,
            response_length=events, exception=exc, context={})


class ProfileShape(LoadTestShape):
    """steady: peak users for the whole duration; step: 4 equal steps up to peak; spike: a quarter of
    peak, then peak for the middle fifth, then a quarter again."""

    def tick(self):
        opts = self.runner.environment.parsed_options
        t, total, peak = self.get_run_time(), opts.duration, max(opts.peak_users, 1)
        if t >= total:
            return None
        if opts.load_profile == "steady":
            return peak, peak
        if opts.load_profile == "step":
            return max(1, int(peak * (int(4 * t / total) + 1) / 4)), peak
        in_spike = 0.4 * total <= t < 0.6 * total
        return (peak if in_spike else max(1, peak // 4)), peak
