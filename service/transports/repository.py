"""Triton's model repository extension on the wire: index entries and load / unload parameters.

``load_model(name)`` from stock tritonclient loads the newest version of ``name`` in the BentoML model
store; a ``"version"`` parameter (``{"parameters": {"version": "<tag version>"}}`` over HTTP, a
``string_param`` over gRPC) picks one. Unload takes the same parameter to retire one version."""

from __future__ import annotations

from ..codecs.json import parse_json
from ..errors import InvalidInput

IGNORED = {"unload_dependents"}  # tritonclient sends it; there are no dependents here


def index_entries(entries) -> list[dict]:
    return [{"name": e.name, "version": e.version, "state": e.state, **({"reason": e.reason} if e.reason else {})}
            for e in entries]


def version_parameter(body: bytes) -> str | None:
    if not body.strip():
        return None
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput("a repository request body must be a JSON object")
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object", "parameters")
    unknown = set(params) - IGNORED - {"version"}
    if unknown:
        raise InvalidInput(f"unsupported load/unload parameter(s) {sorted(unknown)}: this server loads bundles "
                           "from its BentoML model store (only 'version' can be given)", sorted(unknown)[0])
    version = params.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        raise InvalidInput("'parameters.version' must be a non-empty string (a bundle version)", "version")
    return version
