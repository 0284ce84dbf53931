"""HTTP transport: ``POST /predict`` (JSON API), the Open Inference Protocol v2 routes, ``/drift`` and
``/openapi.json``, as a Starlette app that the BentoML service mounts.

Thin by design: read the body under the size limit, decode with a codec, call the core, encode.
``STATUS`` is this transport's one mapping from core error kinds to HTTP codes."""

from __future__ import annotations

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
from . import openapi

log = logging.getLogger("rnnserve.http")

STATUS = {
    "invalid_input": 400,
    "not_found": 404,
    "too_large": 413,
    "unsupported_media_type": 415,
    "unprocessable": 422,
    "overloaded": 429,
    "stream_limit": 429,
    "unavailable": 503,
    "internal": 500,
}
JSON_TYPES = {"application/json", ""}
V2_TYPES = {"application/json", "application/octet-stream", ""}
SERVER_EXTENSIONS = ["binary_tensor_data", "model_configuration", "sequence", "sequence(string_id)"]


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


def build_http_app(get_core: Callable[[], object]) -> Starlette:
    """Routes resolve the worker's core through ``get_core`` on their first request (the BentoML
    service creates the core in its worker, after this app is declared) and keep it."""
    found: list = []

    def current_core():
        if not found:
            found.append(get_core())
        return found[0]

    async def observed(transport: str, endpoint: str, handler, request: Request) -> Response:
        core = current_core()
        started = time.perf_counter()
        core.metrics.begin(transport)
        try:
            response = await handler(core, request)
        except ServingError as exc:
            core.metrics.error(transport, exc.kind)
            response = error_response(exc)
        except Exception:  # a bug, never bad input: log it, answer without internals
            log.exception("unhandled error on %s", endpoint)
            core.metrics.error(transport, "internal")
            response = JSONResponse({"error": "internal error", "kind": "internal"}, status_code=500)
        core.metrics.end(transport, endpoint, str(response.status_code), time.perf_counter() - started)
        return response

    async def predict(core, request: Request) -> Response:
        limits = core.limits
        with core.admit() as ticket:
            body = await read_body(request, limits.max_body_bytes, JSON_TYPES)
            seqs, stream = json_codec.decode_predict(body, core.info.num_features, limits, core.max_id_length)
            prediction = await core.predict(seqs, ticket, stream)
        return Response(json_codec.dumps(json_codec.encode_predict(prediction)), media_type="application/json")

    async def v2_infer(core, request: Request) -> Response:
        info = core.resolve(request.path_params["name"], request.path_params.get("version"))
        limits = core.limits
        with core.admit() as ticket:
            body = await read_body(request, limits.max_body_bytes, V2_TYPES)
            infer = v2.parse_http_request(body, request.headers.get("inference-header-content-length"),
                                          core.max_id_length)
            seqs = v2.to_sequences(infer, info.num_features, limits)
            prediction = await core.predict(seqs, ticket, infer.sequence)
        outputs = v2.output_tensors(prediction, infer.outputs)
        content, headers = v2.encode_http_response(info, infer, outputs, prediction)
        return Response(content, headers=headers)

    async def v2_model_config(core, request: Request) -> Response:
        info = core.resolve(request.path_params["name"], request.path_params.get("version"))
        return JSONResponse(v2.model_config(info, core.limits.max_sequences_per_request, core.stream_idle_timeout_s))

    async def v2_model(core, request: Request) -> Response:
        info = core.resolve(request.path_params["name"], request.path_params.get("version"))
        return JSONResponse(v2.model_metadata(info))

    async def v2_model_ready(core, request: Request) -> Response:
        core.resolve(request.path_params["name"], request.path_params.get("version"))
        return Response(status_code=200 if core.ready else 503)

    async def v2_server(core, request: Request) -> Response:
        return JSONResponse({"name": "rnnserve", "version": pkg_version("rnnserve"), "extensions": SERVER_EXTENSIONS})

    async def v2_live(core, request: Request) -> Response:
        return Response(status_code=200)

    async def v2_ready(core, request: Request) -> Response:
        return Response(status_code=200 if core.ready else 503)

    async def drift(core, request: Request) -> Response:
        report = await core.drift_report(refresh=request.query_params.get("refresh") in ("1", "true"))
        if report is None:
            return JSONResponse({"enabled": False})
        return JSONResponse({"enabled": True, "model": core.info.name, "version": core.info.version, **report})

    async def openapi_doc(core, request: Request) -> Response:
        return JSONResponse(openapi.build(core.info, core.limits))

    def route(path, handler, transport, endpoint, methods):
        async def endpoint_fn(request: Request) -> Response:
            return await observed(transport, endpoint, handler, request)

        return Route(path, endpoint_fn, methods=methods)

    infer_paths = ["/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"]
    routes = [
        route("/predict", predict, "http_json", "predict", ["POST"]),
        *(route(p, v2_infer, "http_v2", "infer", ["POST"]) for p in infer_paths),
        route("/openapi.json", openapi_doc, "http_json", "openapi", ["GET"]),
        route("/drift", drift, "http_json", "drift", ["GET"]),
        route("/v2", v2_server, "http_v2", "server_metadata", ["GET"]),
        route("/v2/health/live", v2_live, "http_v2", "live", ["GET"]),
        route("/v2/health/ready", v2_ready, "http_v2", "ready", ["GET"]),
        route("/v2/models/{name}", v2_model, "http_v2", "model_metadata", ["GET"]),
        route("/v2/models/{name}/versions/{version}", v2_model, "http_v2", "model_metadata", ["GET"]),
        route("/v2/models/{name}/ready", v2_model_ready, "http_v2", "model_ready", ["GET"]),
        route("/v2/models/{name}/config", v2_model_config, "http_v2", "model_config", ["GET"]),
        route("/v2/models/{name}/versions/{version}/config", v2_model_config, "http_v2", "model_config", ["GET"]),
        route("/v2/models/{name}/versions/{version}/ready", v2_model_ready, "http_v2", "model_ready", ["GET"]),
    ]
    return Starlette(routes=routes)


__all__ = ["build_http_app", "STATUS"]
