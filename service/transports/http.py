"""HTTP transport: ``POST /predict`` (JSON API), the Open Inference Protocol v2 routes, ``/drift`` and
``/openapi.json``, as a Starlette app that the BentoML service mounts.

Thin by design: read the body under the size limit, decode with a codec, call the core, encode.
``STATUS`` is this transport's one mapping from core error kinds to HTTP codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib.metadata import version as pkg_version

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..codecs import json as json_codec
from ..codecs import v2
from ..errors import PayloadTooLarge, ServingError, UnsupportedMediaType
from . import openapi, repository

log = logging.getLogger("rnnserve.http")

STATUS = {
    "invalid_input": 400,
    "not_found": 404,
    "too_large": 413,
    "unsupported_media_type": 415,
    "forbidden": 403,
    "unprocessable": 422,
    "overloaded": 429,
    "stream_limit": 429,
    "unavailable": 503,
    "internal": 500,
}
JSON_TYPES = {"application/json", ""}
V2_TYPES = {"application/json", "application/octet-stream", ""}
SERVER_EXTENSIONS = ["binary_tensor_data", "model_configuration", "sequence", "sequence(string_id)",
                     "model_repository", "statistics"]


def error_response(exc: ServingError) -> JSONResponse:
    headers = {"retry-after": "1"} if exc.kind in ("overloaded", "unavailable", "stream_limit") else None
    return JSONResponse(exc.to_dict(), status_code=STATUS.get(exc.kind, 500), headers=headers)


async def read_body(request: Request, limit: int, allowed_types: set[str]) -> bytes:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in allowed_types:
        accepted = sorted(t for t in allowed_types if t)
        raise UnsupportedMediaType(f"content-type {media!r} is not accepted; send one of {accepted}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class Call:
    """What one request resolved to, for its metrics and statistics."""

    __slots__ = ("core", "model", "version")

    def __init__(self) -> None:
        self.core, self.model, self.version = None, "", ""

    def use(self, core):
        self.core, self.model, self.version = core, core.info.name, core.info.version
        return core


def build_http_app(get_registry: Callable[[], object]) -> Starlette:
    """Routes resolve the worker's model registry through ``get_registry`` on their first request (the
    BentoML service creates it in its worker, after this app is declared) and keep it."""
    found: list = []

    def current():
        if not found:
            found.append(get_registry())
        return found[0]

    async def observed(transport: str, endpoint: str, handler, request: Request) -> Response:
        registry = current()
        started = time.perf_counter()
        registry.metrics.begin(transport)
        call = Call()
        try:
            response = await handler(registry, request, call)
        except ServingError as exc:
            registry.metrics.error(transport, exc.kind)
            response = error_response(exc)
        except Exception:  # a bug, never bad input: log it, answer without internals
            log.exception("unhandled error on %s", endpoint)
            registry.metrics.error(transport, "internal")
            response = JSONResponse({"error": "internal error", "kind": "internal"}, status_code=500)
        except asyncio.CancelledError:
            # BentoML's request timeout cancels a request it answers 504 (server.request_timeout_s;
            # a client that goes away does not cancel under uvicorn): leave the in-flight gauge and
            # count it, or the gauge and the failure statistics would miss it for good
            registry.metrics.error(transport, "timeout")
            account(registry, transport, endpoint, call, 504, started)
            raise
        account(registry, transport, endpoint, call, response.status_code, started)
        return response

    def account(registry, transport: str, endpoint: str, call: Call, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        registry.metrics.end(transport, endpoint, call.model, call.version, str(status), seconds)
        if call.core is not None and endpoint in ("predict", "infer"):
            call.core.record_request(status == 200, seconds)

    def path_model(request: Request) -> tuple[str, str | None]:
        return request.path_params["name"], request.path_params.get("version") or None

    async def predict(registry, request: Request, call: Call) -> Response:
        core = call.use(registry.resolve(*registry.json_model(request.query_params.get("model"),
                                                               request.query_params.get("version"))))
        limits = core.limits
        ticket = core.admit()
        try:
            body = await read_body(request, limits.max_body_bytes, JSON_TYPES)
            seqs, stream = json_codec.decode_predict(body, core.info.num_features, limits, core.max_id_length)
            core, ticket = readmit(registry, call, core, ticket, core.info.name, request.query_params.get("version"),
                                   stream)
            prediction = await core.predict(seqs, ticket, stream)
        finally:
            ticket.release()
        return Response(json_codec.dumps(json_codec.encode_predict(prediction)), media_type="application/json")

    async def v2_infer(registry, request: Request, call: Call) -> Response:
        name, version = path_model(request)
        core = call.use(registry.resolve(name, version))
        limits = core.limits
        ticket = core.admit()
        try:
            body = await read_body(request, limits.max_body_bytes, V2_TYPES)
            infer = v2.parse_http_request(body, request.headers.get("inference-header-content-length"),
                                          core.max_id_length)
            core, ticket = readmit(registry, call, core, ticket, name, version, infer.sequence)
            seqs = v2.to_sequences(infer, core.info.num_features, limits)
            prediction = await core.predict(seqs, ticket, infer.sequence)
        finally:
            ticket.release()
        outputs = v2.output_tensors(prediction, infer.outputs)
        content, headers = v2.encode_http_response(core.info, infer, outputs, prediction)
        return Response(content, headers=headers)

    async def v2_model_config(registry, request: Request, call: Call) -> Response:
        core = call.use(registry.resolve(*path_model(request)))
        return JSONResponse(v2.model_config(core.info, core.limits.max_sequences_per_request,
                                            core.stream_idle_timeout_s))

    async def v2_model(registry, request: Request, call: Call) -> Response:
        name, version = path_model(request)
        core = call.use(registry.resolve(name, version))
        return JSONResponse(v2.model_metadata(core.info, [version] if version else registry.versions(name)))

    async def v2_model_ready(registry, request: Request, call: Call) -> Response:
        core = call.use(registry.resolve(*path_model(request)))
        return Response(status_code=200 if core.ready else 503)

    async def v2_model_stats(registry, request: Request, call: Call) -> Response:
        name = request.path_params.get("name")
        version = request.path_params.get("version") or None
        cores = [call.use(registry.resolve(name, version))] if version else registry.cores(name)
        return JSONResponse({"model_stats": [c.stats.to_dict() for c in cores]})

    async def v2_server(registry, request: Request, call: Call) -> Response:
        return JSONResponse({"name": "rnnserve", "version": pkg_version("rnnserve"), "extensions": SERVER_EXTENSIONS})

    async def v2_live(registry, request: Request, call: Call) -> Response:
        return Response(status_code=200)

    async def v2_ready(registry, request: Request, call: Call) -> Response:
        return Response(status_code=200 if registry.ready else 503)

    async def repository_index(registry, request: Request, call: Call) -> Response:
        registry.check_repository_api()
        body = await read_body(request, 1 << 16, V2_TYPES | {"text/plain"})
        ready_only = bool(json_codec.parse_json(body).get("ready")) if body.strip() else False
        return JSONResponse([e for e in repository.index_entries(registry.index()) if not ready_only or
                             e["state"] == "READY"])

    async def repository_load(registry, request: Request, call: Call) -> Response:
        registry.check_repository_api()
        body = await read_body(request, 1 << 20, V2_TYPES | {"text/plain"})
        await registry.load(request.path_params["name"], repository.version_parameter(body))
        return JSONResponse({})

    async def repository_unload(registry, request: Request, call: Call) -> Response:
        registry.check_repository_api()
        body = await read_body(request, 1 << 20, V2_TYPES | {"text/plain"})
        await registry.unload(request.path_params["name"], repository.version_parameter(body))
        return JSONResponse({})

    async def drift(registry, request: Request, call: Call) -> Response:
        core = call.use(registry.resolve(*registry.json_model(request.query_params.get("model"),
                                                               request.query_params.get("version"))))
        report = await core.drift_report(refresh=request.query_params.get("refresh") in ("1", "true"))
        if report is None:
            return JSONResponse({"enabled": False})
        return JSONResponse({"enabled": True, "model": core.info.name, "version": core.info.version, **report})

    async def openapi_doc(registry, request: Request, call: Call) -> Response:
        return JSONResponse(openapi.build(registry.served(), registry.limits, registry.repository_api))

    async def unknown_v2(request: Request) -> Response:
        return JSONResponse({"error": f"no route {request.method} {request.url.path} on this server "
                             f"(extensions: {', '.join(SERVER_EXTENSIONS)})", "kind": "not_found"}, status_code=404)

    def route(path, handler, transport, endpoint, methods):
        return Route(path, observing(transport, endpoint, handler), methods=methods)

    def observing(transport, endpoint, handler):
        async def endpoint_fn(request: Request) -> Response:
            return await observed(transport, endpoint, handler, request)

        return endpoint_fn

    def models(suffix, handler, endpoint, methods=("GET",)):
        return [route(f"/v2/models/{{name}}{suffix}", handler, "http_v2", endpoint, list(methods)),
                route(f"/v2/models/{{name}}/versions/{{version}}{suffix}", handler, "http_v2", endpoint, list(methods))]

    routes = [
        route("/predict", predict, "http_json", "predict", ["POST"]),
        *models("/infer", v2_infer, "infer", ("POST",)),
        route("/openapi.json", openapi_doc, "http_json", "openapi", ["GET"]),
        route("/drift", drift, "http_json", "drift", ["GET"]),
        route("/v2", v2_server, "http_v2", "server_metadata", ["GET"]),
        route("/v2/health/live", v2_live, "http_v2", "live", ["GET"]),
        route("/v2/health/ready", v2_ready, "http_v2", "ready", ["GET"]),
        *models("", v2_model, "model_metadata"),
        *models("/ready", v2_model_ready, "model_ready"),
        *models("/config", v2_model_config, "model_config"),
        *models("/stats", v2_model_stats, "model_stats"),
        route("/v2/models/stats", v2_model_stats, "http_v2", "model_stats", ["GET"]),
        route("/v2/repository/index", repository_index, "http_v2", "repository_index", ["POST"]),
        route("/v2/repository/models/{name}/load", repository_load, "http_v2", "repository_load", ["POST"]),
        route("/v2/repository/models/{name}/unload", repository_unload, "http_v2", "repository_unload", ["POST"]),
        # Any other /v2 path (Triton extensions not served here: trace, logging, shared memory): a JSON
        # error that tritonclient can parse, rather than BentoML's plain-text 404. Last, so it shadows
        # nothing; limited to /v2 so BentoML's own pages keep their routes.
        Route("/v2/{path:path}", unknown_v2, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]

    async def not_found(request: Request, exc) -> Response:  # a JSON body that tritonclient can parse
        status = getattr(exc, "status_code", 404)
        message = f"no route {request.method} {request.url.path}" if status == 404 else str(exc.detail)
        return JSONResponse({"error": message, "kind": "not_found" if status == 404 else "invalid_input"},
                            status_code=status)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.inference = {"predict": observing("http_json", "predict", predict),
                           "infer": observing("http_v2", "infer", v2_infer)}
    return app


def inference_route(scope) -> tuple[str, dict] | None:
    """``("predict" | "infer", path params)`` for the two inference routes (``POST /predict``, ``POST
    /v2/models/{name}[/versions/{version}]/infer``, the same paths the Starlette routes declare),
    else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    if path == "/predict":
        return "predict", {}
    if not path.endswith("/infer") or not path.startswith("/v2/models/"):
        return None
    parts = path.split("/")  # "", "v2", "models", name, ["versions", version,] "infer"
    if len(parts) == 5 and parts[3]:
        return "infer", {"name": parts[3]}
    if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
        return "infer", {"name": parts[3], "version": parts[5]}
    return None


class InferenceFastPath:
    """ASGI middleware (BentoML's public ``Service.add_asgi_middleware``) that answers the inference
    routes with the same endpoint functions the Starlette app routes to, without the layers below it
    that do nothing for them: BentoML's context middleware, two routers (BentoML's and the mounted
    app's, ~25 path regexes), and the mounted app's own exception middleware (``observed`` already
    turns every exception into an answer). BentoML places it inside its timeout and concurrency
    limits, so a request still gets its 504 and the server its 429: nothing is skipped that acts on
    these routes. Everything else goes down the stack unchanged."""

    def __init__(self, app, http_app: Starlette) -> None:
        self.app = app
        self.endpoints = http_app.state.inference

    async def __call__(self, scope, receive, send) -> None:
        found = inference_route(scope)
        if found is None:
            return await self.app(scope, receive, send)
        endpoint, params = found
        scope["path_params"] = params
        response = await self.endpoints[endpoint](Request(scope, receive))
        await response(scope, receive, send)


def readmit(registry, call: Call, core, ticket, name: str, version: str | None, sequence):
    """A continuing chunk of a live stream goes to the version that holds the stream (streams stay on
    the version they started on): move the request's queue slot there."""
    if sequence is None or sequence.start or version:
        return core, ticket
    holder = registry.resolve(name, None, sequence)
    if holder is core:
        return core, ticket
    ticket.release()
    return call.use(holder), holder.admit()


__all__ = ["build_http_app", "InferenceFastPath", "STATUS"]
