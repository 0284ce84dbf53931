"""OpenAPI 3.0 document for the project's HTTP routes (served at ``GET /openapi.json``).

BentoML documents only ``@bentoml.api`` methods; our routes are a mounted Starlette app, so their
contract is written here, from the served models' signatures and the configured limits. Schema
fuzzing (schemathesis) is run against it."""

from __future__ import annotations

from importlib.metadata import version as pkg_version

from ..settings import LimitSettings
from ..types import ModelInfo

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    text = {400: "malformed input", 403: "switched off", 404: "unknown model", 413: "too large",
            415: "unsupported content type",
            422: "unusable values", 429: "overloaded", 503: "not ready or shed"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _timestep(models: list[ModelInfo]) -> dict:
    """One timestep of a /predict sequence, as the served models' signatures take it: a row of float
    features, or a token id (oneOf both when both kinds are served)."""
    kinds = []
    vocab = [m.signature.vocab_size for m in models if m.signature.tokens]
    if vocab:
        kinds.append({"type": "integer", "minimum": 0, "maximum": max(vocab) - 1})
    features = {m.num_features for m in models if not m.signature.tokens}
    if features or not models:
        row = {"type": "array", "items": {"type": "number"}}
        if len(features) == 1:
            (num_features,) = features
            row.update(minItems=num_features, maxItems=num_features)
        kinds.append(row)
    return kinds[0] if len(kinds) == 1 else {"oneOf": kinds}


def _generation(names: list[str], limits: LimitSettings) -> dict:
    """Triton's generate extension: one answer, or server-sent events, from a prompt."""
    sampling = {"max_tokens": {"type": "integer", "minimum": 1, "maximum": limits.max_tokens},
                "temperature": {"type": "number", "minimum": 0, "maximum": 100},
                "top_k": {"type": "integer", "minimum": 0}, "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "seed": {"type": "integer", "minimum": 0},
                "stop": {"oneOf": [{"type": "string", "minLength": 1},
                                   {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 16}]}}
    generate_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["text_input"],
        "properties": {"text_input": {"type": "string", "description": "the prompt, in the model's vocabulary"},
                       "parameters": {"type": "object", "properties": sampling, "additionalProperties": False},
                       **sampling}}}}}
    generate_errors = _errors(400, 404, 413, 415, 429, 503)
    served_name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": names}}]
    return {
        "/v2/models/{name}/generate": {"post": {
            "operationId": "modelGenerate", "parameters": served_name, "requestBody": generate_body,
            "responses": {"200": {"description": "model_name, model_version, text_output, finish_reason"},
                          **generate_errors}}},
        "/v2/models/{name}/generate_stream": {"post": {
            "operationId": "modelGenerateStream", "parameters": served_name, "requestBody": generate_body,
            "responses": {"200": {"description": "server-sent events, one per token (text/event-stream)"},
                          **generate_errors}}},
    }


def build(models: list[ModelInfo], limits: LimitSettings, repository_api: bool = False) -> dict:
    model = models[0].name if models else "model"
    max_length, max_sequences = limits.max_length, limits.max_sequences_per_request
    sequence = {"type": "array", "items": _timestep(models), "minItems": 1, "maxItems": max_length}
    tensor = {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "enum": sorted({t.name for m in models for t in m.signature.inputs})},
            # lengths are accepted as INT32 too, as Triton clients send them
            "datatype": {"type": "string", "enum": sorted({t.datatype for m in models for t in m.signature.inputs}
                                                          | {"INT32"})},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array", "items": {"type": "number"}},  # token ids and lengths are numbers too
            "parameters": {"type": "object"},
        },
    }
    plain = {"200": {"description": "ok"}}
    names = sorted({m.name for m in models}) or [model]
    name_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "example": model}}]
    query = [{"name": "model", "in": "query", "required": len(names) > 1, "schema": {"type": "string", "enum": names}},
             {"name": "version", "in": "query", "required": False, "schema": {"type": "string"}}]
    stream = {"type": "object", "required": ["id"], "additionalProperties": False, "properties": {
        "id": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}]},
        "start": {"type": "boolean"}, "end": {"type": "boolean"}},
        "description": "Send one chunk of this stream (Triton's sequence semantics); 'sequences' then holds "
                       "exactly one sequence and the answer is on the stream's whole prefix."}
    repository = {
        "/v2/repository/index": {"post": {"operationId": "repositoryIndex", "responses": plain}},
        "/v2/repository/models/{name}/load": {"post": {"operationId": "repositoryLoad", "parameters": name_param,
                                                       "responses": {**plain, **_errors(400, 403, 404)}}},
        "/v2/repository/models/{name}/unload": {"post": {"operationId": "repositoryUnload",
                                                         "parameters": name_param,
                                                         "responses": {**plain, **_errors(403, 404)}}},
    } if repository_api else {}
    generation = _generation(names, limits)
    return {
        "openapi": "3.0.3",
        "info": {"title": "rnnserve", "version": pkg_version("rnnserve"),
                 "description": f"Serving {', '.join(names)}: JSON API and Open Inference Protocol v2."},
        "paths": {
            "/predict": {"post": {
                "operationId": "predict", "parameters": query,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["sequences"], "additionalProperties": False,
                    "properties": {"sequences": {"type": "array", "items": sequence, "minItems": 1,
                                                 "maxItems": max_sequences},
                                   "stream": stream}}}}},
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
            "/v2/models/{name}/config": {"get": {"operationId": "modelConfig", "parameters": name_param,
                                                 "responses": {**plain, **_errors(404)}}},
            "/v2/models/{name}/stats": {"get": {"operationId": "modelStatistics", "parameters": name_param,
                                                "responses": {**plain, **_errors(404)}}},
            "/drift": {"get": {"operationId": "drift", "parameters": query, "responses": plain}},
            **generation,
            **repository,
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["error", "kind"], "properties": {
            "error": {"type": "string"}, "kind": {"type": "string"}, "field": {"type": "string"}}}}},
    }
