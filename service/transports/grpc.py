"""gRPC transport: ``inference.GRPCInferenceService`` (Open Inference Protocol v2) on grpc.aio, using
the protobuf stubs that ``tritonclient`` ships, plus the standard gRPC health service.

Runs inside the BentoML worker's event loop, so it feeds the same scheduler as HTTP. ``CODES`` is
this transport's one mapping from core error kinds to gRPC status codes."""

from __future__ import annotations

import logging
import time
from importlib.metadata import version as pkg_version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..codecs import v2, v2_grpc
from ..errors import ServingError
from .http import SERVER_EXTENSIONS

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


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core) -> None:
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
            code = CODES.get(exc.kind, grpc.StatusCode.INTERNAL)
            status = code.name
            await context.abort(code, exc.message)
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
        return pb.ServerMetadataResponse(name="rnnserve", version=pkg_version("rnnserve"),
                                         extensions=SERVER_EXTENSIONS)

    async def ModelMetadata(self, request, context):
        async def run():
            return v2_grpc.metadata_response(self.core.resolve(request.name, request.version))

        return await self._call("model_metadata", context, run)

    async def ModelInfer(self, request, context):
        async def run():
            core = self.core
            info = core.resolve(request.model_name, request.model_version)
            with core.admit() as ticket:
                infer = v2_grpc.decode_request(request)
                seqs = v2.to_sequences(infer, info.num_features, core.limits)
                prediction = await core.predict(seqs, ticket)
            return v2_grpc.encode_response(info, request.id, v2.output_tensors(prediction, infer.outputs))

        return await self._call("infer", context, run)


class GrpcServer:
    """grpc.aio server bound on the worker's loop; health reports SERVING once the core is ready."""

    def __init__(self, core, host: str, port: int, max_message_bytes: int) -> None:
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
        try:
            bound = self.server.add_insecure_port(self.address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"gRPC port {port} on {host}: address already in use (or not bindable); choose another "
                          "port with RNNSERVE_SERVER__GRPC_PORT")

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


__all__ = ["GrpcServer", "InferenceServicer", "CODES"]
