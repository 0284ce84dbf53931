"""gRPC transport: ``inference.GRPCInferenceService`` (Open Inference Protocol v2) on grpc.aio, using
the protobuf stubs that ``tritonclient`` ships, plus the standard gRPC health service.

Runs inside the BentoML worker's event loop, so it feeds the same scheduler as HTTP. ``CODES`` is
this transport's one mapping from core error kinds to gRPC status codes."""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..codecs import v2, v2_grpc
from ..dataplane import Call, DataPlane
from ..errors import InvalidInput, ServingError

log = logging.getLogger("rnnserve.grpc")

CODES = {
    "invalid_input": grpc.StatusCode.INVALID_ARGUMENT,
    "unprocessable": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "overloaded": grpc.StatusCode.UNAVAILABLE,
    "stream_limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _answer(self, call: Call, fn):
        """``(reply, None)``, or ``(None, (code, message))`` for an error, with the call's status set."""
        try:
            reply = await fn(call)
        except ServingError as exc:
            code = CODES.get(exc.kind, grpc.StatusCode.INTERNAL)
            call.error(exc.kind, code.name)
            return None, (code, exc.message)
        except asyncio.CancelledError:  # the client's deadline passed, it cancelled, or its stream ended
            call.error("cancelled", "CANCELLED")
            raise
        except Exception:
            log.exception("unhandled error on gRPC %s", call.endpoint)
            call.error("internal", "INTERNAL")
            return None, (grpc.StatusCode.INTERNAL, "internal error")
        call.status = "OK"
        return reply, None

    async def _call(self, endpoint: str, context, fn):
        with self.plane.call("grpc", endpoint) as call:
            reply, error = await self._answer(call, fn)
        if error is not None:
            await context.abort(*error)
        return reply

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request, context):
        async def run(call):
            return pb.ModelReadyResponse(ready=self.plane.model_ready(call, request.name, request.version or None))

        return await self._call("model_ready", context, run)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request, context):
        async def run(call):
            core = self.plane.model(call, request.name, request.version or None)
            return v2_grpc.metadata_response(core.info, self.plane.versions(request.name, request.version or None))

        return await self._call("model_metadata", context, run)

    async def ModelConfig(self, request, context):
        async def run(call):
            core = self.plane.model(call, request.name, request.version or None)
            config = v2.model_config(core.info, core.limits.max_sequences_per_request, core.stream_idle_timeout_s)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

        return await self._call("model_config", context, run)

    async def ModelStatistics(self, request, context):
        async def run(call):
            out = pb.ModelStatisticsResponse()
            for stats in self.plane.stats(call, request.name or None, request.version or None):
                json_format.ParseDict(stats, out.model_stats.add())
            return out

        return await self._call("model_stats", context, run)

    async def RepositoryIndex(self, request, context):
        async def run(call):
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in self.plane.repository_index(request.ready)])

        return await self._call("repository_index", context, run)

    async def RepositoryModelLoad(self, request, context):
        async def run(call):
            self.plane.check_repository_api()
            await self.plane.load(request.model_name, repository_version(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await self._call("repository_load", context, run)

    async def RepositoryModelUnload(self, request, context):
        async def run(call):
            self.plane.check_repository_api()
            await self.plane.unload(request.model_name, repository_version(request.parameters))
            return pb.RepositoryModelUnloadResponse()

        return await self._call("repository_unload", context, run)

    async def _infer(self, request, call: Call) -> pb.ModelInferResponse:
        plane = self.plane
        with plane.admit(call, request.model_name, request.model_version or None) as slot:
            infer = v2_grpc.decode_request(request, plane.max_id_length)
            prediction = await plane.predict(slot, infer)
        return v2_grpc.encode_response(prediction.model, request.id, v2.output_tensors(prediction, infer.outputs),
                                       prediction)

    async def ModelInfer(self, request, context):
        return await self._call("infer", context, lambda call: self._infer(request, call))

    async def ModelStreamInfer(self, request_iterator, context):
        """Triton's bidirectional stream (``tritonclient.grpc`` ``start_stream`` / ``async_stream_infer``):
        each request is answered on the stream, errors in band (``error_message``) without ending it.
        Requests run concurrently, started in arrival order, so the chunks of one sequence reach its
        stream (which applies them one at a time) in the order they were sent."""
        responses: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(request):
            with self.plane.call("grpc", "stream_infer") as call:
                reply, error = await self._answer(call, lambda c: self._infer(request, c))
            if error is None:
                out = pb.ModelStreamInferResponse(infer_response=reply)
            else:
                out = pb.ModelStreamInferResponse(error_message=error[1],
                                                  infer_response=pb.ModelInferResponse(id=request.id))
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


def repository_version(params) -> str | None:
    """The ``version`` load/unload parameter (a string_param), if any."""
    if "version" not in params:
        return None
    p = params["version"]
    if p.WhichOneof("parameter_choice") != "string_param" or not p.string_param:
        raise InvalidInput("the 'version' parameter must be a non-empty string_param (a bundle version)", "version")
    return p.string_param


class GrpcServer:
    """grpc.aio server bound on the worker's loop; health reports SERVING once the core is ready."""

    def __init__(self, plane: DataPlane, host: str, port: int, max_message_bytes: int) -> None:
        self.address = f"{host}:{port}"
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 1),  # several BentoML workers share the port
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), self.server)
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
