"""Transport-neutral errors raised by the core. Each transport maps ``kind`` to its own codes
(see the tables in ``http_app`` and ``grpc_server``); messages never carry paths or traces."""

from __future__ import annotations


class ServingError(Exception):
    kind = "internal"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        out = {"error": self.message, "kind": self.kind}
        if self.field is not None:
            out["field"] = self.field
        return out


class InvalidInput(ServingError):
    """Malformed request: wrong type, shape, dtype, missing field (HTTP 400)."""

    kind = "invalid_input"


class UnprocessableInput(ServingError):
    """Well-formed but unusable values: NaN/Inf, empty or over-long sequences (HTTP 422)."""

    kind = "unprocessable"


class PayloadTooLarge(ServingError):
    """Body, batch or message over a configured limit (HTTP 413)."""

    kind = "too_large"


class ModelNotFound(ServingError):
    kind = "not_found"


class Forbidden(ServingError):
    """An operation switched off on this server (HTTP 403, gRPC PERMISSION_DENIED)."""

    kind = "forbidden"


class UnsupportedMediaType(ServingError):
    kind = "unsupported_media_type"


class Overloaded(ServingError):
    """Admission queue full: shed at once (HTTP 429)."""

    kind = "overloaded"


class StreamLimit(ServingError):
    """Too many live streams: a new stream is refused (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""

    kind = "stream_limit"


class Unavailable(ServingError):
    """Not ready, shutting down, or queued past the latency limit (HTTP 503)."""

    kind = "unavailable"
