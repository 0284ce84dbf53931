"""HTTP transport: ``POST /predict`` (JSON API), the Open Inference Protocol v2 routes (with Triton's
generate extension: ``generate``, ``generate_stream``), ``/drift`` and ``/openapi.json``, as a
Starlette app that the BentoML service mounts.

Thin by design: read the body under the size limit, decode with a codec, call the data plane
(``service.dataplane``), encode. ``STATUS`` is this transport's one mapping from core error kinds to
HTTP codes. Restricted API categories are checked by the data plane (``DataPlane.authorize``) for
every route here, and for BentoML's own (``/livez``, ``/readyz``, ``/metrics``, its pages) by
``RestrictedSystemRoutes``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..codecs import json as json_codec
from ..codecs import v2
from ..dataplane import SERVER_EXTENSIONS, Call, DataPlane
from ..errors import PayloadTooLarge, ServingError, UnsupportedMediaType
from ..security import Restrictions
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


class Endpoint:
    """One route's handler under the request's accounting and this transport's error table. The data
    plane is found on the first request (the BentoML service creates it in its worker, after the
    routes are declared) and kept."""

    def __init__(self, find_plane: Callable[[], DataPlane], transport: str, name: str, handler) -> None:
        self._find_plane = find_plane
        self._plane: DataPlane | None = None
        self.transport, self.name, self.handler = transport, name, handler

    async def handle(self, request: Request) -> Response:
        plane = self._plane or self._found()
        with plane.call(self.transport, self.name) as call:
            try:
                if plane.restricted:
                    plane.authorize(self.name, request.headers)
                response = await self.handler(plane, request, call)
            except ServingError as exc:
                response = error_response(exc)
                call.error(exc.kind, str(response.status_code))
                return response
            except Exception:  # a bug, never bad input: log it, answer without internals
                log.exception("unhandled error on %s", self.name)
                call.error("internal", "500")
                return JSONResponse({"error": "internal error", "kind": "internal"}, status_code=500)
            except asyncio.CancelledError:
                # BentoML's request timeout cancels a request it answers 504 (server.request_timeout_s;
                # a client that goes away does not cancel under uvicorn): count it, or the in-flight
                # gauge and the failure statistics would miss it for good
                call.error("timeout", "504")
                raise
            call.status = str(response.status_code)
            return response

    def _found(self) -> DataPlane:
        self._plane = self._find_plane()
        return self._plane


def path_model(request: Request) -> tuple[str, str | None]:
    return request.path_params["name"], request.path_params.get("version") or None


# ---- inference ------------------------------------------------------------------------------------

async def predict(plane: DataPlane, request: Request, call: Call) -> Response:
    query = request.query_params
    name, version = plane.json_model(query.get("model"), query.get("version"))
    with plane.admit(call, name, version) as slot:
        body = await read_body(request, plane.limits.max_body_bytes, JSON_TYPES)
        prediction = await plane.predict(slot, json_codec.decode_predict(body, plane.max_id_length))
    return Response(json_codec.dumps(json_codec.encode_predict(prediction)), media_type="application/json")


async def v2_infer(plane: DataPlane, request: Request, call: Call) -> Response:
    with plane.admit(call, *path_model(request)) as slot:
        body = await read_body(request, plane.limits.max_body_bytes, V2_TYPES)
        infer = v2.parse_http_request(body, request.headers.get("inference-header-content-length"),
                                      plane.max_id_length)
        prediction = await plane.predict(slot, infer)
    outputs = v2.output_tensors(prediction, infer.outputs)
    content, headers = v2.encode_http_response(prediction.model, infer, outputs, prediction)
    return Response(content, headers=headers)


# ---- generation: Triton's generate extension -----------------------------------------------------------

async def v2_generate(plane: DataPlane, request: Request, call: Call) -> Response:
    with plane.admit(call, *path_model(request)) as slot:
        body = await read_body(request, plane.limits.max_body_bytes, JSON_TYPES)
        generation = await plane.generate(slot, plane.generation_request(json_codec.parse_json(body)))
    info = slot.core.info
    return JSONResponse({"model_name": info.name, "model_version": info.version, "text_output": generation.text,
                         "finish_reason": generation.finish_reason})


async def v2_generate_stream(plane: DataPlane, request: Request, call: Call) -> Response:
    """Server-sent events, one per new piece of text, the last with ``finish_reason``. What fails before
    the first piece (bad parameters, overload, shedding) is an ordinary error answer; what fails after
    is a last event ``{"error": ...}``. The queue slot is held until the stream ends; a client that goes
    away ends it at the next piece, and its decode at the next iteration."""
    slot = plane.admit(call, *path_model(request))
    try:
        body = await read_body(request, plane.limits.max_body_bytes, JSON_TYPES)
        pieces = plane.generate_stream(slot, plane.generation_request(json_codec.parse_json(body)))
        first = await anext(pieces)
    except BaseException:
        slot.__exit__()
        raise
    info = slot.core.info
    head = {"model_name": info.name, "model_version": info.version}

    async def events():
        try:
            async with contextlib.aclosing(pieces):
                piece = first
                while piece is not None:
                    text, reason = piece
                    event = {**head, "text_output": text, **({"finish_reason": reason} if reason else {})}
                    yield b"data: " + json_codec.dumps(event) + b"\n\n"
                    piece = await anext(pieces, None)
        except ServingError as exc:
            yield b"data: " + json_codec.dumps(exc.to_dict()) + b"\n\n"
        finally:
            slot.__exit__()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


# ---- metadata, configuration, statistics, health ----------------------------------------------------

async def v2_model(plane: DataPlane, request: Request, call: Call) -> Response:
    name, version = path_model(request)
    core = plane.model(call, name, version)
    return JSONResponse(v2.model_metadata(core.info, plane.versions(name, version)))


async def v2_model_config(plane: DataPlane, request: Request, call: Call) -> Response:
    core = plane.model(call, *path_model(request))
    return JSONResponse(v2.model_config(core.info, core.limits.max_sequences_per_request,
                                        core.stream_idle_timeout_s))


async def v2_model_ready(plane: DataPlane, request: Request, call: Call) -> Response:
    return Response(status_code=200 if plane.model_ready(call, *path_model(request)) else 503)


async def v2_model_stats(plane: DataPlane, request: Request, call: Call) -> Response:
    params = request.path_params
    return JSONResponse({"model_stats": plane.stats(call, params.get("name"), params.get("version") or None)})


async def v2_server(plane: DataPlane, request: Request, call: Call) -> Response:
    return JSONResponse(plane.server_metadata())


async def v2_live(plane: DataPlane, request: Request, call: Call) -> Response:
    return Response(status_code=200)


async def v2_ready(plane: DataPlane, request: Request, call: Call) -> Response:
    return Response(status_code=200 if plane.ready else 503)


async def drift(plane: DataPlane, request: Request, call: Call) -> Response:
    query = request.query_params
    return JSONResponse(await plane.drift(call, query.get("model"), query.get("version"),
                                          query.get("refresh") in ("1", "true")))


async def openapi_doc(plane: DataPlane, request: Request, call: Call) -> Response:
    return JSONResponse(openapi.build(plane.served(), plane.limits, plane.repository_api))


# ---- the repository API -----------------------------------------------------------------------------

async def repository_index(plane: DataPlane, request: Request, call: Call) -> Response:
    plane.check_repository_api()  # refused before the body is read when the API is off
    body = await read_body(request, 1 << 16, V2_TYPES | {"text/plain"})
    ready_only = bool(json_codec.parse_json(body).get("ready")) if body.strip() else False
    return JSONResponse(repository.index_entries(plane.repository_index(ready_only)))


async def repository_load(plane: DataPlane, request: Request, call: Call) -> Response:
    plane.check_repository_api()
    body = await read_body(request, 1 << 20, V2_TYPES | {"text/plain"})
    await plane.load(request.path_params["name"], repository.version_parameter(body))
    return JSONResponse({})


async def repository_unload(plane: DataPlane, request: Request, call: Call) -> Response:
    plane.check_repository_api()
    body = await read_body(request, 1 << 20, V2_TYPES | {"text/plain"})
    await plane.unload(request.path_params["name"], repository.version_parameter(body))
    return JSONResponse({})


async def unknown_v2(request: Request) -> Response:
    return JSONResponse({"error": f"no route {request.method} {request.url.path} on this server "
                         f"(extensions: {', '.join(SERVER_EXTENSIONS)})", "kind": "not_found"}, status_code=404)


async def not_found(request: Request, exc) -> Response:  # a JSON body that tritonclient can parse
    status = getattr(exc, "status_code", 404)
    message = f"no route {request.method} {request.url.path}" if status == 404 else str(exc.detail)
    return JSONResponse({"error": message, "kind": "not_found" if status == 404 else "invalid_input"},
                        status_code=status)


# (path, methods, transport, endpoint, handler); a path ending in "{model}" is served both as
# /v2/models/{name}<rest> and /v2/models/{name}/versions/{version}<rest>
ROUTES = [
    ("/predict", ["POST"], "http_json", "predict", predict),
    ("{model}/infer", ["POST"], "http_v2", "infer", v2_infer),
    ("{model}/generate", ["POST"], "http_v2", "generate", v2_generate),
    ("{model}/generate_stream", ["POST"], "http_v2", "generate_stream", v2_generate_stream),
    ("/openapi.json", ["GET"], "http_json", "openapi", openapi_doc),
    ("/drift", ["GET"], "http_json", "drift", drift),
    ("/v2", ["GET"], "http_v2", "server_metadata", v2_server),
    ("/v2/health/live", ["GET"], "http_v2", "live", v2_live),
    ("/v2/health/ready", ["GET"], "http_v2", "ready", v2_ready),
    # before "{model}", which would take "stats" for a model name (tritonclient's all-models statistics)
    ("/v2/models/stats", ["GET"], "http_v2", "model_stats", v2_model_stats),
    ("{model}", ["GET"], "http_v2", "model_metadata", v2_model),
    ("{model}/ready", ["GET"], "http_v2", "model_ready", v2_model_ready),
    ("{model}/config", ["GET"], "http_v2", "model_config", v2_model_config),
    ("{model}/stats", ["GET"], "http_v2", "model_stats", v2_model_stats),
    ("/v2/repository/index", ["POST"], "http_v2", "repository_index", repository_index),
    ("/v2/repository/models/{name}/load", ["POST"], "http_v2", "repository_load", repository_load),
    ("/v2/repository/models/{name}/unload", ["POST"], "http_v2", "repository_unload", repository_unload),
]
MODEL_PATHS = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")


def build_http_app(find_plane: Callable[[], DataPlane]) -> Starlette:
    """The HTTP routes; ``find_plane()`` returns the worker's data plane (called on the first request)."""
    routes, inference = [], {}
    for path, methods, transport, name, handler in ROUTES:
        endpoint = Endpoint(find_plane, transport, name, handler).handle
        paths = [path.replace("{model}", p) for p in MODEL_PATHS] if path.startswith("{model}") else [path]
        routes += [Route(p, endpoint, methods=methods) for p in paths]
        if name in ("predict", "infer"):
            inference[name] = endpoint
    # Any other /v2 path (Triton extensions not served here: trace, logging, shared memory): a JSON
    # error that tritonclient can parse, rather than BentoML's plain-text 404. Last, so it shadows
    # nothing; limited to /v2 so BentoML's own pages keep their routes.
    routes.append(Route("/v2/{path:path}", unknown_v2, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]))
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.inference = inference
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


# BentoML's own routes and their endpoint names in the data plane's category table (its static UI
# assets under /static_content stay open: the same files for every BentoML server)
SYSTEM_ROUTES = {"/livez": "livez", "/healthz": "livez", "/readyz": "readyz", "/metrics": "metrics",
                 "/": "bentoml_docs", "/docs.json": "bentoml_docs", "/schema.json": "bentoml_docs"}


class RestrictedSystemRoutes:
    """ASGI middleware, added only when some API category is restricted: BentoML's own routes
    (``SYSTEM_ROUTES``: its probes, ``/metrics`` and its documentation pages) follow the same
    restrictions as ours, the same ``Restrictions`` object the data plane holds (one table from
    endpoint to category). BentoML answers them itself, outside our accounting, so a refusal here is
    the 403 body of ``error_response`` without a ``rnnserve_*`` count."""

    def __init__(self, app, restrictions: Restrictions) -> None:
        self.app = app
        self.restrictions = restrictions

    async def __call__(self, scope, receive, send) -> None:
        endpoint = SYSTEM_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is not None:
            try:
                self.restrictions.check(endpoint, Headers(scope=scope))
            except ServingError as exc:
                return await error_response(exc)(scope, receive, send)
        return await self.app(scope, receive, send)


__all__ = ["build_http_app", "InferenceFastPath", "RestrictedSystemRoutes", "STATUS", "SYSTEM_ROUTES"]
