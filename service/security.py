"""Restricted API categories, as Triton's ``--http-restricted-api`` / ``--grpc-restricted-protocol``
offer them: an operator lists categories of endpoints that answer only requests carrying a given
header (gRPC: metadata) key and value; every other request of those categories gets 403 /
PERMISSION_DENIED naming the category and the key, never the value.

This module owns the one mapping from endpoint to category (``ENDPOINT_CATEGORY``, the endpoint names
both transports give ``DataPlane.call``), the setting's syntax (``server.restricted_api``:
``<api>[,<api>...]:<key>=<value>`` groups separated by ``;``, the value inline or ``@/path``) and the
check itself, in constant time (the values' SHA-256 digests compared with ``hmac.compare_digest``, so
neither a value's bytes nor its length show in the timing).

Categories are Triton's names. ``shared-memory``, ``trace`` and ``logging`` have no endpoint here:
accepted, they restrict nothing. ``metrics`` (``/metrics``) is ours: Triton serves its metrics on a
port of their own, so restricting them, or not, is a separate choice here (Prometheus must then send
the header)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import Forbidden

CATEGORIES = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
              "statistics", "trace", "logging", "metrics")
NO_ENDPOINT_HERE = frozenset({"shared-memory", "trace", "logging"})

ENDPOINT_CATEGORY = {
    # health: Triton's server live/ready, model ready and the gRPC health service; BentoML's probes
    "live": "health", "ready": "health", "model_ready": "health", "grpc_health": "health",
    "livez": "health", "readyz": "health",
    "server_metadata": "metadata", "model_metadata": "metadata", "openapi": "metadata",
    "bentoml_docs": "metadata",  # BentoML's own pages: /, /docs.json, /schema.json (they list our routes)
    "model_config": "model-config",
    "model_stats": "statistics", "drift": "statistics",
    "repository_index": "model-repository", "repository_load": "model-repository",
    "repository_unload": "model-repository",
    "predict": "inference", "infer": "inference", "stream_infer": "inference",
    "generate": "inference", "generate_stream": "inference",
    "metrics": "metrics",
}

# Triton's gRPC clients send the key of --grpc-restricted-protocol with this prefix; both names are
# accepted, on both transports.
TRITON_GRPC_PREFIX = "triton-grpc-protocol-"
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_VALUE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")  # printable ASCII, no edge spaces


@dataclass(frozen=True)
class Group:
    """One ``<apis>:<key>=<value>`` group as written; ``value`` may still be ``@/path``."""

    categories: tuple[str, ...]
    key: str
    value: str


def parse_groups(spec: str) -> list[Group]:
    """The groups of a ``server.restricted_api`` value; raises ValueError naming what is wrong (never
    echoing a value). Files named by ``@/path`` are not read here."""
    groups, seen = [], set()
    for raw in (part.strip() for part in spec.split(";")):
        if not raw:
            continue
        apis, colon, rest = raw.partition(":")
        key, equals, value = rest.partition("=")
        if not colon or not equals:
            raise ValueError(f"group {len(groups) + 1} is not <api>[,<api>...]:<key>=<value>")
        categories = tuple(a.strip() for a in apis.split(","))
        for category in categories:
            if category not in CATEGORIES:
                raise ValueError(f"unknown API category {category!r}: one of {', '.join(CATEGORIES)}")
            if category in seen:
                raise ValueError(f"API category {category!r} is in more than one group")
            seen.add(category)
        key = key.strip().lower()
        if not _KEY.match(key) or key.startswith("grpc-") or key.endswith("-bin"):
            raise ValueError(f"header key {key!r} of group {len(groups) + 1} is not a usable header/metadata name "
                             "(letters, digits, '-', '_', '.'; not grpc-*, not *-bin)")
        if not value:
            raise ValueError(f"group {len(groups) + 1} (key {key!r}) has an empty value")
        groups.append(Group(categories, key, value))
    return groups


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("latin-1", "replace")).digest()


@dataclass(frozen=True)
class Restriction:
    category: str
    key: str
    digest: bytes  # SHA-256 of the expected value: compared in constant time, never shown


class Restrictions:
    """The restricted categories of one server, checked per request by endpoint name."""

    def __init__(self, restrictions: list[Restriction]) -> None:
        self.by_category = {r.category: r for r in restrictions}
        self.by_endpoint = {endpoint: self.by_category[category] for endpoint, category in ENDPOINT_CATEGORY.items()
                            if category in self.by_category}

    @classmethod
    def parse(cls, spec: str, read: Callable[[Path], str] = Path.read_text) -> Restrictions:
        """From a ``server.restricted_api`` value, reading ``@/path`` values (stripped of surrounding
        whitespace, so a file ending in a newline works). Raises ValueError (or OSError for a file)."""
        out = []
        for group in parse_groups(spec):
            value = group.value
            if value.startswith("@"):
                path = Path(value[1:])
                try:
                    value = read(path).strip()
                except OSError as exc:
                    raise OSError(f"cannot read the value of key {group.key!r} from {path}: "
                                  f"{exc.strerror or exc}") from exc
                where = f"the value in {path}"
            else:
                where = f"the value of key {group.key!r}"
            if not _VALUE.match(value):
                raise ValueError(f"{where} is empty or not printable ASCII (what a header can carry)")
            out += [Restriction(category, group.key, _digest(value)) for category in group.categories]
        return cls(out)

    def __bool__(self) -> bool:
        return bool(self.by_category)

    def check(self, endpoint: str, headers: Mapping[str, str] | None) -> None:
        """Raises Forbidden when ``endpoint``'s category is restricted and ``headers`` (lower-case keys, or
        a case-insensitive mapping) lack its key with the expected value."""
        restriction = self.by_endpoint.get(endpoint)
        if restriction is None:
            return
        given = None
        if headers is not None:
            given = headers.get(restriction.key)
            if given is None:
                given = headers.get(TRITON_GRPC_PREFIX + restriction.key)
        if given is None or not hmac.compare_digest(_digest(given), restriction.digest):
            raise Forbidden(f"this API (category '{restriction.category}') is restricted: send the header "
                            f"'{restriction.key}' with its value", restriction.key)

    def categories(self) -> list[str]:
        return sorted(self.by_category)


NO_RESTRICTIONS = Restrictions([])

__all__ = ["CATEGORIES", "ENDPOINT_CATEGORY", "NO_ENDPOINT_HERE", "NO_RESTRICTIONS", "Restrictions",
           "TRITON_GRPC_PREFIX", "parse_groups"]
