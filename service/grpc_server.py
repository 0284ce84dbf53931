"""gRPC transport: ``inference.GRPCInferenceService`` (Open Inference Protocol v2) on grpc.aio,
using the protobuf stubs that ``tritonclient`` ships, plus the standard gRPC health service.

Runs inside the BentoML worker's event loop, so it feeds the same adaptive batching queue as HTTP.
``CODES`` is this transport's one mapping from core error kinds to gRPC status codes."""

from __future__ import annotations

import logging
import time
from importlib.metadata import version as pkg_version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from . import codec_v2
from .core import InferenceCore
from .errors import InvalidInput, ServingError

log = logging.getLogger("rnnserve.grpc")

CODES = {
    "invalid_input": grpc.StatusCode.INVALID_ARGUMENT,
    "unprocessable": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "overloaded": grpc.StatusCode.UNAVAILABLE,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def decode_request(request: pb.ModelInferRequest) -> codec_v2.InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs = []
    for i, t in enumerate(request.inputs):
        where = f"inputs[{i}]"
        shape = list(t.shape)
        if raw:
            inputs.append(codec_v2.tensor_from_bytes(t.name, t.datatype, shape, raw[i], where))
        else:
            field = CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise InvalidInput(f"{where}: datatype {t.datatype!r} is not accepted", where)
            values = getattr(t.contents, field)
            inputs.append(codec_v2.tensor_from_values(t.name, t.datatype, shape, list(values), where))
    outputs = tuple(codec_v2.RequestedOutput(o.name) for o in request.outputs) or None
    return codec_v2.InferRequest(request.id or None, tuple(inputs), outputs)


def encode_response(core: InferenceCore, request_id: str, outputs: list[codec_v2.Tensor]):
    response = pb.ModelInferResponse(
        model_name=core.bundle.name, model_version=core.bundle.version, id=request_id
    )
    for t in outputs:
        response.outputs.append(
            pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
        )
        response.raw_output_contents.append(codec_v2.tensor_raw(t))
    return response


def _tensor_meta(spec: dict):
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def _call(self, endpoint: str, context, fn):
        core = self.core
        started = time.perf_counter()
        status = "OK"
        core.metrics.begin("grpc")
        try:
            return await fn()
        except ServingError as exc:
            core.metrics.error("grpc", exc.kind)
            status = CODES.get(exc.kind, grpc.StatusCode.INTERNAL).name
            await context.abort(CODES.get(exc.kind, grpc.StatusCode.INTERNAL), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error on gRPC %s", endpoint)
            core.metrics.error("grpc", "internal")
            status = "INTERNAL"
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            core.metrics.end("grpc", endpoint, status, time.perf_counter() - started)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def ModelReady(self, request, context):
        async def run():
            self.core.resolve(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.core.ready)

        return await self._call("model_ready", context, run)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="rnnserve", version=pkg_version("rnnserve"), extensions=["binary_tensor_data"]
        )

    async def ModelMetadata(self, request, context):
        async def run():
            self.core.resolve(request.name, request.version)
            meta = self.core.v2_metadata()
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[_tensor_meta(s) for s in meta["inputs"]],
                outputs=[_tensor_meta(s) for s in meta["outputs"]],
            )

        return await self._call("model_metadata", context, run)

    async def ModelInfer(self, request, context):
        async def run():
            core = self.core
            core.resolve(request.model_name, request.model_version)
            with core.admit() as slot:
                infer = decode_request(request)
                seqs = codec_v2.to_sequences(infer, core.bundle.num_features, core.settings.limits)
                result = await core.predict(seqs, slot)
            outputs = codec_v2.output_tensors(result, infer.outputs)
            return encode_response(core, request.id, outputs)

        return await self._call("infer", context, run)


class GrpcServer:
    """grpc.aio server bound on the worker's loop; health reports SERVING once the core is ready."""

    def __init__(self, core: InferenceCore, host: str, port: int, max_message_bytes: int) -> None:
        self.core = core
        self.address = f"{host}:{port}"
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 1),  # several BentoML workers share the port
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        bound = self.server.add_insecure_port(self.address)
        if bound == 0:
            raise RuntimeError(f"gRPC could not bind {self.address}")

    async def start(self) -> None:
        await self.server.start()
        log.info("gRPC inference.GRPCInferenceService listening on %s", self.address)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "inference.GRPCInferenceService"):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


__all__ = ["GrpcServer", "CODES"]
