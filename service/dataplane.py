"""The data plane: one transport-neutral path for every request (MLServer's ``DataPlane``).

Transports decode, call the data plane and encode; they never resolve models, admit work or keep
accounts themselves. What happens here, in this order, for an inference request:

1. ``call``: the request's accounting opens (in flight, latency, status, error kind, and Triton's
   per-version statistics for inference endpoints), closed once whatever happens (``Call``); then
   ``authorize``: where the operator restricted the endpoint's API category (Triton's restricted
   APIs, ``service.security``), the request's headers / gRPC metadata must carry its key, or 403;
2. ``admit``: the model version it names (or the model's default) is resolved and one queue slot is
   taken before the body is read, so an overloaded or not-ready version refuses at once (``Slot``);
3. ``predict``: the decoded request is routed (a continuing chunk of a live stream goes to the
   version that holds the stream, its queue slot moved there), its sequences validated against that
   version's signature, and the prediction made.

A generation request (``generate``, ``generate_stream``) is admitted the same way and decoded by the
core of the version it names (``service.generation``). Model metadata, statistics, the repository API
and drift are answered here too, as plain data that each transport encodes. Errors are the core's
transport-neutral ones (``service.errors``); each transport maps them with its own table."""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib.metadata import version as pkg_version
from typing import Protocol

import numpy as np

from rnnserve.bundle.signature import Signature

from .generation import params as generation_params
from .generation.decode import Generation
from .generation.params import GenerateRequest
from .observability.metrics import RequestSink
from .security import NO_RESTRICTIONS, Restrictions
from .settings import LimitSettings
from .types import ModelInfo, Prediction, SequenceControl

SERVER_NAME = "rnnserve"
SERVER_EXTENSIONS = ("binary_tensor_data", "model_configuration", "sequence", "sequence(string_id)",
                     "model_repository", "statistics", "generate")
# counted in Triton's statistics
INFERENCE_ENDPOINTS = frozenset({"predict", "infer", "stream_infer", "generate", "generate_stream"})
OK_STATUSES = frozenset({"200", "OK"})


class Decoded(Protocol):
    """A decoded inference request, before it is validated against the model that answers it."""

    sequence: SequenceControl | None  # the stream it is a chunk of (None: whole sequences)

    def sequences(self, signature: Signature, limits: LimitSettings) -> list[np.ndarray]: ...


class Call:
    """One request's accounting, opened by ``DataPlane.call`` and closed once on leaving its ``with``
    block: the transport sets ``status`` (its own code: "200", "OK", ...) and reports an error's kind."""

    __slots__ = ("_metrics", "transport", "endpoint", "started", "core", "status")

    def __init__(self, metrics: RequestSink, transport: str, endpoint: str) -> None:
        self._metrics = metrics
        self.transport, self.endpoint = transport, endpoint
        self.started = time.perf_counter()
        self.core = None  # the model version the request went to, once known
        self.status = ""
        metrics.begin(transport)

    def use(self, core):
        self.core = core
        return core

    def error(self, kind: str, status: str) -> None:
        self._metrics.error(self.transport, kind)
        self.status = status

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self.started
        core = self.core
        model, version = (core.info.name, core.info.version) if core is not None else ("", "")
        self._metrics.end(self.transport, self.endpoint, model, version, self.status, seconds)
        if core is not None and self.endpoint in INFERENCE_ENDPOINTS:
            core.record_request(self.status in OK_STATUSES, seconds)


class Slot:
    """A request's place in a model version's queue: the version that answers it and the ticket that
    holds its queue slots (one while the body is read, one per sequence once decoded); released on
    leaving its ``with`` block, whatever happened."""

    __slots__ = ("call", "core", "ticket", "name", "pinned")

    def __init__(self, call: Call, core, name: str, pinned: bool) -> None:
        self.call, self.core, self.name, self.pinned = call, core, name, pinned
        self.ticket = core.admit()

    def move(self, core) -> None:
        """Re-admit at ``core`` (the version holding the request's stream)."""
        self.ticket.release()
        self.core = self.call.use(core)
        self.ticket = core.admit()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc) -> None:
        self.ticket.release()


class DataPlane:
    def __init__(self, registry, metrics: RequestSink, max_id_length: int = 256,
                 restrictions: Restrictions = NO_RESTRICTIONS) -> None:
        self.registry = registry
        self.metrics = metrics
        self.max_id_length = max_id_length  # characters of a string sequence_id, for the codecs
        self.restrictions = restrictions
        # whether any endpoint is restricted: transports read the headers / metadata only then
        self.restricted = bool(restrictions)

    @property
    def limits(self) -> LimitSettings:
        return self.registry.limits

    def call(self, transport: str, endpoint: str) -> Call:
        return Call(self.metrics, transport, endpoint)

    def authorize(self, endpoint: str, headers: Mapping[str, str] | None) -> None:
        """Raises Forbidden when ``endpoint``'s API category is restricted and ``headers`` (the HTTP
        headers, or the gRPC metadata with lower-case keys) lack its key and value. Call it inside the
        request's ``call``, so a refusal is counted like any error."""
        self.restrictions.check(endpoint, headers)

    # ---- inference --------------------------------------------------------------------------------

    def model(self, call: Call, name: str, version: str | None = None):
        """The served version ``name`` / ``version`` (None: the default) means; raises ModelNotFound."""
        return call.use(self.registry.resolve(name, version or None))

    def json_model(self, name: str | None, version: str | None) -> tuple[str, str | None]:
        """The model a ``/predict`` request means: named, or the one served."""
        return self.registry.json_model(name, version)

    def admit(self, call: Call, name: str, version: str | None = None) -> Slot:
        """Resolve and take a queue slot, before the body is read; raises when the version is not
        ready or its queue is full."""
        return Slot(call, self.model(call, name, version), name, bool(version))

    async def predict(self, slot: Slot, request: Decoded) -> Prediction:
        control = request.sequence
        if control is not None and not control.start and not slot.pinned:
            holder = self.registry.resolve(slot.name, None, control)  # streams stay on their version
            if holder is not slot.core:
                slot.move(holder)
        core = slot.core
        sequences = request.sequences(core.info.signature, core.limits)
        return await core.predict(sequences, slot.ticket, control)

    # ---- generation (Triton's generate extension; service.generation) ----------------------------------

    def generation_request(self, body: dict) -> GenerateRequest:
        """A decoded generate request (a JSON object); raises InvalidInput naming a bad parameter."""
        return generation_params.from_json(body, self.limits)

    async def generate(self, slot: Slot, request: GenerateRequest) -> Generation:
        """The whole completion, decoded on the server in the step policy's iterations."""
        return await slot.core.generate(request, slot.ticket)

    def generate_stream(self, slot: Slot, request: GenerateRequest):
        """The completion as an async iterator of ``(text, finish_reason)`` pieces (``InferenceCore.
        generate_stream``): the caller keeps ``slot`` until it is exhausted or closed."""
        return slot.core.generate_stream(request, slot.ticket)

    # ---- metadata, configuration, statistics --------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.registry.ready

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": pkg_version("rnnserve"), "extensions": list(SERVER_EXTENSIONS)}

    def model_ready(self, call: Call, name: str, version: str | None) -> bool:
        return self.model(call, name, version).ready

    def versions(self, name: str, version: str | None) -> list[str]:
        return [version] if version else self.registry.versions(name)

    def stats(self, call: Call, name: str | None, version: str | None) -> list[dict]:
        """Triton's statistics of one version, every version of a model, or every served version."""
        if version:
            cores = [self.model(call, name, version)]
        else:
            cores = self.registry.cores(name or None)
            if name and not cores:
                self.model(call, name)  # raises the not-found error
        return [core.stats.to_dict() for core in cores]

    def served(self) -> list[ModelInfo]:
        """Every served version's model info (the OpenAPI document describes them)."""
        return self.registry.served()

    @property
    def repository_api(self) -> bool:
        return self.registry.repository_api

    async def drift(self, call: Call, name: str | None, version: str | None, refresh: bool) -> dict:
        core = self.model(call, *self.json_model(name, version))
        report = await core.drift_report(refresh=refresh)
        if report is None:
            return {"enabled": False}
        return {"enabled": True, "model": core.info.name, "version": core.info.version, **report}

    # ---- the repository API -------------------------------------------------------------------------

    def check_repository_api(self) -> None:
        """Raises Forbidden when the repository API is switched off."""
        self.registry.check_repository_api()

    def repository_index(self, ready_only: bool):
        self.registry.check_repository_api()
        return [e for e in self.registry.index() if not ready_only or e.state == "READY"]

    async def load(self, name: str, version: str | None) -> str:
        self.registry.check_repository_api()
        return await self.registry.load(name, version)

    async def unload(self, name: str, version: str | None) -> list[str]:
        self.registry.check_repository_api()
        return await self.registry.unload(name, version)


__all__ = ["Call", "DataPlane", "Decoded", "SERVER_EXTENSIONS", "Slot"]
