"""The gRPC servicer in process against a fake core: decoding, the error table, metadata."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from rnnserve.service.transports.grpc import CODES, InferenceServicer
from tests.service.fakes import F, FakeCore


class Context:
    """What the servicer uses of ``grpc.aio.ServicerContext``: ``abort`` raises, like the real one."""

    def __init__(self):
        self.code = self.details = None

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


def call(core, method, request):
    context = Context()

    async def main():
        return await getattr(InferenceServicer(core), method)(request, context)

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
    assert core.metrics.errors == [("grpc", kind)] and core.admission.held == 0


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
    assert list(server.extensions) == ["binary_tensor_data"]
