"""gRPC transport: ``inference.GRPCInferenceService`` (Open Inference Protocol v2) on grpc.aio, using
the protobuf stubs that ``tritonclient`` ships, plus the standard gRPC health service.

Runs inside the BentoML worker's event loop, so it feeds the same scheduler as HTTP. ``CODES`` is
this transport's one mapping from core error kinds to gRPC status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import version as pkg_version

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2
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
    "stream_limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
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

    async def ModelConfig(self, request, context):
        async def run():
            core = self.core
            info = core.resolve(request.name, request.version)
            config = v2.model_config(info, core.limits.max_sequences_per_request, core.stream_idle_timeout_s)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

        return await self._call("model_config", context, run)

    async def _infer(self, request) -> pb.ModelInferResponse:
        core = self.core
        info = core.resolve(request.model_name, request.model_version)
        with core.admit() as ticket:
            infer = v2_grpc.decode_request(request, core.max_id_length)
            seqs = v2.to_sequences(infer, info.num_features, core.limits)
            prediction = await core.predict(seqs, ticket, infer.sequence)
        return v2_grpc.encode_response(info, request.id, v2.output_tensors(prediction, infer.outputs), prediction)

    async def ModelInfer(self, request, context):
        return await self._call("infer", context, lambda: self._infer(request))

    async def ModelStreamInfer(self, request_iterator, context):
        """Triton's bidirectional stream (``tritonclient.grpc`` ``start_stream`` / ``async_stream_infer``):
        each request is answered on the stream, errors in band (``error_message``) without ending it.
        Requests run concurrently, started in arrival order, so the chunks of one sequence reach its
        stream (which applies them one at a time) in the order they were sent."""
        core = self.core
        responses: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(request):
            started = time.perf_counter()
            core.metrics.begin("grpc")
            status = "OK"
            try:
                out = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ServingError as exc:
                core.metrics.error("grpc", exc.kind)
                status = CODES.get(exc.kind, grpc.StatusCode.INTERNAL).name
                out = pb.ModelStreamInferResponse(error_message=exc.message,
                                                  infer_response=pb.ModelInferResponse(id=request.id))
            except Exception:
                log.exception("unhandled error on gRPC stream_infer")
                core.metrics.error("grpc", "internal")
                status = "INTERNAL"
                out = pb.ModelStreamInferResponse(error_message="internal error",
                                                  infer_response=pb.ModelInferResponse(id=request.id))
            finally:
                core.metrics.end("grpc", "stream_infer", status, time.perf_counter() - started)
            await responses.put(out)

        async def read():
            async for request in request_iterator:
                task = asyncio.get_running_loop().create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:
                await asyncio.wait(set(pending))
            await responses.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (out := await responses.get()) is not None:
                yield out
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()


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
