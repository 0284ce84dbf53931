"""The gRPC servicer in process against a fake core: decoding, the error table, metadata."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from rnnserve.service.transports.grpc import CODES, InferenceServicer
from tests.service.fakes import F, FakeCore, FakeRegistry, cancel_midway


class Context:
    """What the servicer uses of ``grpc.aio.ServicerContext``: ``abort`` raises, like the real one;
    ``invocation_metadata`` the call's metadata."""

    def __init__(self, metadata=()):
        self.code = self.details = None
        self.metadata = tuple(metadata)

    def invocation_metadata(self):
        return self.metadata

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


def call(core, method, request):
    context = Context()
    core.registry = FakeRegistry(core)

    async def main():
        return await getattr(InferenceServicer(core.registry.plane), method)(request, context)

    try:
        return asyncio.run(main()), context
    except grpc.aio.AbortError:
        return None, context


def infer_request(x: np.ndarray, lengths=None, model="fake") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id="q")
    req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape)))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    if lengths is not None:
        req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="lengths", datatype="INT64",
                                                                 shape=[len(lengths)]))
        req.raw_input_contents.append(np.asarray(lengths, np.int64).tobytes())
    return req


def test_model_infer_decodes_raw_tensors_and_answers_every_output():
    x = np.zeros((2, 3, F), np.float32)
    x[0, :, 0], x[1, :1, 0] = 1.0, 5.0
    response, context = call(FakeCore(), "ModelInfer", infer_request(x, [3, 1]))
    assert context.code is None
    assert [o.name for o in response.outputs] == ["output", "probabilities", "label"]
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 3)
    np.testing.assert_allclose(out, [[3.0, 3.0, 0.0], [5.0, 1.0, 0.0]])
    assert response.id == "q" and response.model_version == "7"


@pytest.mark.parametrize("core, request_, kind", [
    (FakeCore(), infer_request(np.zeros((1, 2, F + 1))), "invalid_input"),
    (FakeCore(), infer_request(np.full((1, 2, F), np.nan)), "unprocessable"),
    (FakeCore(), infer_request(np.zeros((5, 2, F))), "too_large"),
    (FakeCore(), infer_request(np.zeros((1, 2, F)), model="other"), "not_found"),
    (FakeCore(queue=0), infer_request(np.zeros((1, 2, F))), "overloaded"),
    (FakeCore(ready=False), infer_request(np.zeros((1, 2, F))), "unavailable"),
])
def test_errors_use_the_documented_codes(core, request_, kind):
    _, context = call(core, "ModelInfer", request_)
    assert context.code == CODES[kind] and context.details
    assert core.registry.metrics.errors == [("grpc", kind)] and core.admission.held == 0


def test_a_bug_is_internal_without_details():
    _, context = call(FakeCore(fail=KeyError("secret")), "ModelInfer", infer_request(np.zeros((1, 2, F))))
    assert context.code == grpc.StatusCode.INTERNAL and context.details == "internal error"


def test_metadata_and_readiness():
    meta, _ = call(FakeCore(), "ModelMetadata", pb.ModelMetadataRequest(name="fake"))
    assert meta.versions == ["7"] and [i.name for i in meta.inputs] == ["input", "lengths"]
    assert list(meta.inputs[0].shape) == [-1, -1, F]
    ready, _ = call(FakeCore(ready=False), "ModelReady", pb.ModelReadyRequest(name="fake"))
    assert ready.ready is False
    server, _ = call(FakeCore(), "ServerMetadata", pb.ServerMetadataRequest())
    assert {"binary_tensor_data", "sequence", "sequence(string_id)", "model_configuration", "model_repository",
            "statistics", "generate"} == set(server.extensions)


def with_sequence(request, **params):
    for name, (kind, value) in params.items():
        setattr(request.parameters[name], kind, value)
    return request


@pytest.mark.parametrize("kind, sid", [("int64_param", 7), ("uint64_param", 2**64 - 1), ("string_param", "abc")])
def test_sequence_parameters_in_every_id_form(kind, sid):
    core = FakeCore()
    x = np.ones((1, 2, F), np.float32)
    req = with_sequence(infer_request(x), sequence_id=(kind, sid), sequence_start=("bool_param", True))
    response, context = call(core, "ModelInfer", req)
    assert context.code is None, context.details
    echoed = response.parameters["sequence_id"]
    assert getattr(echoed, echoed.WhichOneof("parameter_choice")) == sid
    assert list(core.streams) == [("str" if kind == "string_param" else "int", sid)]


@pytest.mark.parametrize("params, field", [
    ({"sequence_id": ("bool_param", True)}, "sequence_id"),
    ({"sequence_id": ("int64_param", -5)}, "sequence_id"),
    ({"sequence_id": ("int64_param", 5), "sequence_start": ("string_param", "true")}, "sequence_start"),
])
def test_bad_sequence_parameters_are_invalid_argument(params, field):
    core = FakeCore()
    _, context = call(core, "ModelInfer", with_sequence(infer_request(np.ones((1, 2, F))), **params))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and field in context.details
    assert not core.seen


def test_model_config_over_grpc():
    response, context = call(FakeCore(), "ModelConfig", pb.ModelConfigRequest(name="fake"))
    assert context.code is None
    config = response.config
    assert config.max_batch_size == 4 and config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert [i.name for i in config.input] == ["input", "lengths"] and list(config.input[0].dims) == [-1, F]


def test_model_stream_infer_answers_in_band_and_keeps_the_stream_order():
    core = FakeCore()
    x = np.ones((1, 2, F), np.float32)
    requests = [with_sequence(infer_request(x), sequence_id=("int64_param", 9),
                              sequence_start=("bool_param", i == 0)) for i in range(5)]
    requests.insert(2, infer_request(np.zeros((1, 2, F + 1))))  # a bad one: answered with an error, stream goes on

    async def main():
        async def gen():
            for r in requests:
                yield r

        return [r async for r in InferenceServicer(FakeRegistry(core).plane).ModelStreamInfer(gen(), Context())]

    out = asyncio.run(main())
    errors = [r for r in out if r.error_message]
    assert len(out) == 6 and len(errors) == 1 and "shape" in errors[0].error_message
    outputs = [np.frombuffer(r.infer_response.raw_output_contents[0], np.float32)[1]
               for r in out if not r.error_message]
    assert outputs == [2.0, 4.0, 6.0, 8.0, 10.0]  # the prefix length grows chunk by chunk, in order


def test_a_cancelled_call_is_counted_as_cancelled_not_ok():
    """A client whose deadline passes (or that cancels) cancels the handler: its in-flight count ends
    with status CANCELLED and a failure in the statistics, and the core's work is cancelled."""
    core = FakeCore(delay=30)
    core.registry = FakeRegistry(core)

    cancel_midway(lambda: InferenceServicer(core.registry.plane).ModelInfer(
        infer_request(np.ones((1, 3, F), np.float32)), Context()))
    assert core.cancelled == 1 and core.seen == []
    assert core.registry.metrics.ends == [("grpc", "infer", "CANCELLED")]
    assert core.registry.metrics.errors == [("grpc", "cancelled")]
    assert core.stats.to_dict()["inference_stats"]["fail"]["count"] == 1


# ---- restricted API categories -------------------------------------------------------------------------

EVERY_CATEGORY = ("health,metadata,inference,model-config,model-repository,statistics,metrics:x-key=k1;"
                  "shared-memory,trace,logging:x-other=k2")
RPC_REQUESTS = {
    "ServerLive": pb.ServerLiveRequest(), "ServerReady": pb.ServerReadyRequest(),
    "ModelReady": pb.ModelReadyRequest(name="fake"), "ServerMetadata": pb.ServerMetadataRequest(),
    "ModelMetadata": pb.ModelMetadataRequest(name="fake"), "ModelConfig": pb.ModelConfigRequest(name="fake"),
    "ModelStatistics": pb.ModelStatisticsRequest(name="fake"), "RepositoryIndex": pb.RepositoryIndexRequest(),
    "RepositoryModelLoad": pb.RepositoryModelLoadRequest(model_name="fake"),
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest(model_name="fake"),
    "ModelInfer": infer_request(np.ones((1, 2, F), np.float32)),
}


def restricted_call(method, request, metadata=()):
    core = FakeCore()
    core.registry = FakeRegistry(core, restricted_api=EVERY_CATEGORY)
    context = Context(metadata)

    async def main():
        servicer = InferenceServicer(core.registry.plane)
        if method == "ModelStreamInfer":
            async def one():
                yield request
            return [r async for r in servicer.ModelStreamInfer(one(), context)]
        if method == "HealthCheck":
            from grpc_health.v1 import health_pb2

            from rnnserve.service.transports.grpc import RestrictedHealth

            health = RestrictedHealth(core.registry.plane)
            await health.set("", health_pb2.HealthCheckResponse.SERVING)
            return await health.Check(health_pb2.HealthCheckRequest(), context)
        return await getattr(servicer, method)(request, context)

    try:
        return asyncio.run(main()), context, core.registry
    except grpc.aio.AbortError:
        return None, context, core.registry


@pytest.mark.parametrize("method", [*RPC_REQUESTS, "ModelStreamInfer", "HealthCheck"])
def test_every_rpc_is_refused_when_its_category_is_restricted_and_answered_with_the_key(method):
    assert {n for n in vars(InferenceServicer) if n[0].isupper()} == {*RPC_REQUESTS, "ModelStreamInfer"}
    request = RPC_REQUESTS.get(method, infer_request(np.ones((1, 2, F), np.float32)))
    for metadata in [(), (("x-key", "wrong"),), (("x-other", "k2"),)]:
        reply, context, registry = restricted_call(method, request, metadata)
        assert reply is None and context.code == grpc.StatusCode.PERMISSION_DENIED, (method, metadata)
        assert "is restricted: send the header 'x-key'" in context.details and "k1" not in context.details
        assert registry.metrics.errors == [("grpc", "forbidden")]
    for metadata in [(("x-key", "k1"),), (("triton-grpc-protocol-x-key", "k1"),)]:
        reply, context, _ = restricted_call(method, request, metadata)
        assert context.code is None and reply is not None, (method, context.details)
