"""gRPC transport: ``inference.GRPCInferenceService`` (Open Inference Protocol v2) on grpc.aio, using
the protobuf stubs that ``tritonclient`` ships, plus the standard gRPC health service.

Runs inside the BentoML worker's event loop, so it feeds the same scheduler as HTTP. ``CODES`` is
this transport's one mapping from core error kinds to gRPC status codes. Restricted API categories
are checked by the data plane (``DataPlane.authorize``) on the call's metadata: per call, at the start
of a ``ModelStreamInfer`` stream, and on the health service. With TLS (``service.tls``) the port is
a secure port whose certificate is reloaded when its files change."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ..codecs import generate_grpc, v2, v2_grpc
from ..dataplane import Call, DataPlane
from ..errors import InvalidInput, ServingError
from ..tls import grpc_credentials
from . import grpc_threads

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


def metadata(context) -> dict[str, str]:
    """The call's metadata (gRPC keys are lower case), for ``DataPlane.authorize``."""
    return dict(context.invocation_metadata() or ())


def refusal(plane: DataPlane, endpoint: str, context) -> tuple | None:
    """``(code, message)`` when ``endpoint`` is restricted and the call lacks the key (counted as a
    refused call of ``endpoint``), else None. For what is not answered under a ``Call`` of its own:
    a stream's start, the health service."""
    if not plane.restricted:
        return None
    try:
        plane.authorize(endpoint, metadata(context))
    except ServingError as exc:
        code = CODES.get(exc.kind, grpc.StatusCode.INTERNAL)
        with plane.call("grpc", endpoint) as call:
            call.error(exc.kind, code.name)
        return code, exc.message
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _answer(self, call: Call, fn, context=None):
        """``(reply, None)``, or ``(None, (code, message))`` for an error, with the call's status set.
        ``context``: the call's, whose metadata the data plane checks where the endpoint is restricted."""
        try:
            if context is not None and self.plane.restricted:
                self.plane.authorize(call.endpoint, metadata(context))
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
            reply, error = await self._answer(call, fn, context)
        if error is not None:
            await context.abort(*error)
        return reply

    async def ServerLive(self, request, context):
        async def run(call):
            return pb.ServerLiveResponse(live=True)

        return await self._call("live", context, run)

    async def ServerReady(self, request, context):
        async def run(call):
            return pb.ServerReadyResponse(ready=self.plane.ready)

        return await self._call("ready", context, run)

    async def ModelReady(self, request, context):
        async def run(call):
            return pb.ModelReadyResponse(ready=self.plane.model_ready(call, request.name, request.version or None))

        return await self._call("model_ready", context, run)

    async def ServerMetadata(self, request, context):
        async def run(call):
            return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

        return await self._call("server_metadata", context, run)

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
        A request with input ``text_input`` is a generation, answered token by token (``_generate``).
        Requests run concurrently, started in arrival order, so the chunks of one sequence reach its
        stream (which applies them one at a time) in the order they were sent. A restricted
        ``inference`` category is checked once, on the stream's metadata, when it opens."""
        error = refusal(self.plane, "stream_infer", context)
        if error is not None:
            await context.abort(*error)
        responses: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(request):
            if generate_grpc.is_generation(request):
                return await self._generate(request, responses)
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


    async def _generate(self, request, responses: asyncio.Queue) -> None:
        """A generation on the stream: one response per piece of text, the last marked
        ``triton_final_response``; an error in band. The stream ending cancels it (its row leaves at
        the next iteration)."""
        plane = self.plane

        async def run(call):
            with plane.admit(call, request.model_name, request.model_version or None) as slot:
                generation = generate_grpc.decode(request, plane.limits)
                info = slot.core.info
                async with contextlib.aclosing(plane.generate_stream(slot, generation)) as pieces:
                    async for text, reason in pieces:
                        await responses.put(pb.ModelStreamInferResponse(
                            infer_response=generate_grpc.response(info, request.id, text, reason)))

        with plane.call("grpc", "generate_stream") as call:
            _, error = await self._answer(call, run)
        if error is not None:
            await responses.put(pb.ModelStreamInferResponse(error_message=error[1],
                                                            infer_response=pb.ModelInferResponse(id=request.id)))


def repository_version(params) -> str | None:
    """The ``version`` load/unload parameter (a string_param), if any."""
    if "version" not in params:
        return None
    p = params["version"]
    if p.WhichOneof("parameter_choice") != "string_param" or not p.string_param:
        raise InvalidInput("the 'version' parameter must be a non-empty string_param (a bundle version)", "version")
    return p.string_param


class RestrictedHealth(health.aio.HealthServicer):
    """The standard health service, under the ``health`` category when that is restricted (as Triton's)."""

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane

    async def Check(self, request, context):
        error = refusal(self.plane, "grpc_health", context)
        if error is not None:
            await context.abort(*error)
        return await super().Check(request, context)

    async def Watch(self, request, context):
        """Writes each status change on the call (``context.write``) until the client goes away."""
        error = refusal(self.plane, "grpc_health", context)
        if error is not None:
            await context.abort(*error)
        await super().Watch(request, context)


class GrpcServer:
    """The gRPC server of the worker; health reports SERVING once the core is ready. ``server``:
    ServerSettings (host, port, TLS files, ``grpc_threads``). With ``grpc_threads`` > 0 (the default),
    grpc's thread-pool server whose calls run the same servicers' coroutines on the worker's loop
    (``grpc_threads``); with 0, grpc.aio on that loop. Built on the worker's running loop."""

    def __init__(self, plane: DataPlane, server, max_message_bytes: int) -> None:
        host, port = server.host, server.grpc_port
        self.address = f"{host}:{port}"
        self.threads = server.grpc_threads
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1),  # several BentoML workers share the port
        ]
        self.health = RestrictedHealth(plane)
        servicer = InferenceServicer(plane)

        def add_servicers(target) -> None:
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, target)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, target)

        if self.threads:
            self.server = grpc_threads.server(asyncio.get_running_loop(), add_servicers, self.threads, options)
        else:
            self.server = grpc.aio.server(options=options)
            add_servicers(self.server)
        credentials = grpc_credentials(server)
        self.secure = credentials is not None
        try:
            if credentials is None:
                bound = self.server.add_insecure_port(self.address)
            else:
                bound = self.server.add_secure_port(self.address, credentials)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"gRPC port {port} on {host}: address already in use (or not bindable); choose another "
                          "port with RNNSERVE_SERVER__GRPC_PORT")

    async def start(self) -> None:
        if self.threads:
            self.server.start()
        else:
            await self.server.start()
        log.info("gRPC inference.GRPCInferenceService listening on %s%s (%s)", self.address,
                 " (TLS)" if self.secure else "", f"{self.threads} threads" if self.threads else "grpc.aio")

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "inference.GRPCInferenceService"):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        if self.threads:  # the calls being answered need the loop: wait for them off it
            await asyncio.to_thread(self.server.stop(grace).wait)
        else:
            await self.server.stop(grace)


__all__ = ["GrpcServer", "InferenceServicer", "CODES", "RestrictedHealth"]
