"""OpenAPI 3.0 document for the project's HTTP routes (served at ``GET /openapi.json``).

BentoML documents only ``@bentoml.api`` methods; our routes are a mounted Starlette app, so their
contract is written here, from the bundle's feature count and the configured limits. Schema
fuzzing (schemathesis) is run against it."""

from __future__ import annotations

from importlib.metadata import version as pkg_version

from ..settings import LimitSettings
from ..types import ModelInfo

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    text = {400: "malformed input", 404: "unknown model", 413: "too large", 415: "unsupported content type",
            422: "unusable values", 429: "overloaded", 503: "not ready or shed"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def build(info: ModelInfo, limits: LimitSettings) -> dict:
    model, num_features = info.name, info.num_features
    max_length, max_sequences = limits.max_length, limits.max_sequences_per_request
    timestep = {"type": "array", "items": {"type": "number"}, "minItems": num_features, "maxItems": num_features}
    sequence = {"type": "array", "items": timestep, "minItems": 1, "maxItems": max_length}
    tensor = {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "enum": ["input", "lengths"]},
            "datatype": {"type": "string", "enum": ["FP32", "INT32", "INT64"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array", "items": {"type": "number"}},
            "parameters": {"type": "object"},
        },
    }
    plain = {"200": {"description": "ok"}}
    name_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "example": model}}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "rnnserve", "version": pkg_version("rnnserve"),
                 "description": f"Serving {model!r}: JSON API and Open Inference Protocol v2."},
        "paths": {
            "/predict": {"post": {
                "operationId": "predict",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["sequences"], "additionalProperties": False,
                    "properties": {"sequences": {"type": "array", "items": sequence, "minItems": 1,
                                                 "maxItems": max_sequences}}}}}},
                "responses": {"200": {"description": "one prediction per sequence, same order",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **_errors(400, 413, 415, 422, 429, 503)},
            }},
            "/v2": {"get": {"operationId": "serverMetadata", "responses": plain}},
            "/v2/health/live": {"get": {"operationId": "serverLive", "responses": plain}},
            "/v2/health/ready": {"get": {"operationId": "serverReady", "responses": {**plain, "503": {
                "description": "not ready"}}}},
            "/v2/models/{name}": {"get": {"operationId": "modelMetadata", "parameters": name_param,
                                          "responses": {**plain, **_errors(404)}}},
            "/v2/models/{name}/ready": {"get": {"operationId": "modelReady", "parameters": name_param,
                                                "responses": {**plain, **_errors(404, 503)}}},
            "/v2/models/{name}/infer": {"post": {
                "operationId": "modelInfer", "parameters": name_param,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["inputs"],
                    "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": tensor,
                                                                        "minItems": 1},
                                   "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}}}},
                                   "parameters": {"type": "object"}}}}}},
                "responses": {"200": {"description": "inference response"},
                              **_errors(400, 404, 413, 415, 422, 429, 503)},
            }},
            "/drift": {"get": {"operationId": "drift", "responses": plain}},
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["error", "kind"], "properties": {
            "error": {"type": "string"}, "kind": {"type": "string"}, "field": {"type": "string"}}}}},
    }
