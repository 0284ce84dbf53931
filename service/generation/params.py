"""A generation request, transport-neutral: the prompt text and the sampling parameters, read from
Triton's generate extension (a JSON body with ``text_input`` and ``parameters``; sampling keys are
read from ``parameters`` and, as Triton's examples send them, from the top level) or from a gRPC
``ModelStreamInfer`` request (input ``text_input`` BYTES ``[1]``, keys in its ``parameters``). Every
bad value is refused (400) naming its key; limits are ``limits.max_tokens`` (tokens generated) and
``limits.max_length`` (prompt tokens, checked once the prompt is tokenized)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InvalidInput
from ..settings import LimitSettings

DEFAULT_MAX_TOKENS = 16  # Triton's vLLM backend's default
MAX_STOP = 16  # stop strings per request
SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop")
IGNORED = ("stream",)  # sent by Triton's clients; the endpoint decides whether the answer streams
TOP_LEVEL = ("text_input", "parameters", "id", "model_name", "model_version")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateRequest:
    text: str
    sampling: Sampling
    id: str | None = None


def from_json(body: dict, limits: LimitSettings) -> GenerateRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the generate request must be a JSON object with 'text_input' and 'parameters'")
    unknown = sorted(set(body) - {*TOP_LEVEL, *SAMPLING, *IGNORED})
    if unknown:
        raise InvalidInput(f"unknown key(s) {unknown} in the generate request; accepted: "
                           f"{[*TOP_LEVEL, *SAMPLING]}", unknown[0])
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object of sampling parameters", "parameters")
    text = body.get("text_input")
    if not isinstance(text, str):
        raise InvalidInput("'text_input' (the prompt, a string) is required", "text_input")
    merged = {k: body[k] for k in SAMPLING if k in body}
    for key, value in params.items():
        if key in merged and merged[key] != value:
            raise InvalidInput(f"'{key}' is given twice, differently (top level and parameters)", key)
        merged[key] = value
    request_id = body.get("id")
    return GenerateRequest(text, sampling(merged, limits), request_id if isinstance(request_id, str) else None)


def sampling(params: dict, limits: LimitSettings) -> Sampling:
    """``params``: the sampling keys (JSON values); anything else is refused naming it."""
    unknown = sorted(set(params) - {*SAMPLING, *IGNORED})
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {unknown}; sampling parameters are {list(SAMPLING)}", unknown[0])
    max_tokens = _int(params, "max_tokens", DEFAULT_MAX_TOKENS, 1, limits.max_tokens,
                      "limits.max_tokens, RNNSERVE_LIMITS__MAX_TOKENS")
    temperature = _float(params, "temperature", 1.0, 0.0, 100.0)
    top_k = _int(params, "top_k", 0, 0, 1 << 30)
    top_p = _float(params, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise InvalidInput(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    seed = _int(params, "seed", None, 0, 2**64 - 1)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    stop = params.get("stop", ())
    if isinstance(stop, str):
        stop = (stop,)
    if (not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop)
            or len(stop) > MAX_STOP):
        raise InvalidInput(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings",
                           "stop")
    return Sampling(max_tokens, temperature, top_k, top_p, seed, tuple(stop))


def _int(params: dict, key: str, default, low: int, high: int, setting: str = "") -> int | None:
    value = params.get(key, default)
    if value is default:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{key}' must be an integer, got {value!r}", key)
    if not low <= value <= high:
        limit = f" (the server's limit, {setting})" if setting else ""
        raise InvalidInput(f"'{key}' must be between {low} and {high}{limit}, got {value}", key)
    return value


def _float(params: dict, key: str, default: float, low: float, high: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidInput(f"'{key}' must be a number, got {value!r}", key)
    if not low <= value <= high:
        raise InvalidInput(f"'{key}' must be between {low:g} and {high:g}, got {value}", key)
    return float(value)
