"""The BentoML service (``bentofile.yaml`` points here): ``rnnserve.service.bento:RNNService``.

This is the one module with import-time work, because BentoML discovers a service by its decorated
class and reads the process model (workers, request timeout, concurrency) from the decorator when it
imports this module. So this module is an entry point: it reads the settings tree once, here, and
both ``rnnserve serve`` and a plain ``bentoml serve`` of the bento get the same limits from it (and an
``RNNSERVE_*`` variable that is not a setting stops either with one line and exit status 2), with the
restricted API values (``server.restricted_api``) read once here too. The bundle is loaded and
verified, sessions opened and servers started in the worker (``__init__`` / startup hook), never at
import.

HTTP (port 3000): ``/predict``, ``/v2/...``, ``/drift``, ``/openapi.json`` (mounted Starlette app),
``/livez``, ``/readyz``, ``/metrics`` (BentoML). gRPC (port 8001): ``inference.GRPCInferenceService``
+ health.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import bentoml

from . import startup, tls
from .settings import Settings
from .transports.http import InferenceFastPath, RestrictedSystemRoutes, build_http_app

log = logging.getLogger("rnnserve.service")


# Our own routes measured by rnnserve_request_duration_seconds: BentoML's per-request middleware
# (OpenTelemetry spans, its traffic metrics, the access log) does nothing for them but cost CPU.
INFERENCE_PATHS = ["/predict", "/v2/"]


def bentoml_config(settings: Settings) -> dict:
    """BentoML's service configuration, from the settings tree (its only source)."""
    server = settings.server
    ssl = tls.bentoml_ssl(server)
    return {
        **({"ssl": ssl} if ssl else {}),
        "name": "rnnserve",
        "workers": server.workers,
        "traffic": {"timeout": server.request_timeout_s, "max_concurrency": server.max_concurrency},
        "endpoints": {"livez": "/livez", "readyz": "/readyz"},
        # skip_paths also reaches BentoML's traffic-metrics middleware, but there it only skips the
        # last-request timestamp: request count, duration and in-progress are still recorded for
        # these paths (bentoml 1.4.39, _internal/server/http/instruments.py); no setting turns that off
        "logging": {"access": {"enabled": server.access_log,
                               "skip_paths": [] if server.access_log else INFERENCE_PATHS}},
        "tracing": {"excluded_urls": INFERENCE_PATHS},
    }


# Garbage collection thresholds for the serving worker. Every request allocates short-lived containers
# (uvicorn, Starlette, BentoML, protobuf), and with 64 requests in flight many survive CPython's default
# 700-allocation gen0 threshold, get promoted and are scanned again by gen1/gen2 collections. Measured
# on the loaded worker (HTTP v2, c64, GC callbacks): defaults ran ~100 collections/s and spent 13-20% of
# the worker's CPU in the collector; 20000/50/100 ran ~3/s and 1.4-2.3%, and throughput rose from
# 682 to 1,011 seq/s in the same session. gc.freeze() keeps the start-up objects out of every scan.
GC_THRESHOLDS = (20_000, 50, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _current_plane():
    return bentoml.get_current_service().plane


# read once per process: BentoML imports this module in the server and each worker
SETTINGS, RESTRICTIONS = startup.service_settings()
HTTP_APP = build_http_app(_current_plane)


@bentoml.service(**bentoml_config(SETTINGS))
@bentoml.asgi_app(HTTP_APP, path="/")
class RNNService:
    def __init__(self) -> None:
        from .core import InferenceCore
        from .dataplane import DataPlane
        from .observability.metrics import MetricFamilies, NullRequestMetrics, RequestMetrics
        from .registry import ModelRegistry
        from .settings import model_list

        logging.getLogger("rnnserve").setLevel(logging.INFO)
        settings = self.settings = SETTINGS
        self.grpc = None
        self._warm_task: asyncio.Task | None = None
        self._drift_task: asyncio.Task | None = None
        families = MetricFamilies() if settings.metrics.enabled else None

        def build(name: str, version: str) -> InferenceCore:  # blocking: bundle, session, self-test, calibration
            core = InferenceCore.from_settings(settings, name, version, families)
            core.prepare()
            return core

        repo = settings.repository
        self.registry = ModelRegistry(build, settings.limits, repo.default_version, repo.drain_timeout_s,
                                      repo.api_enabled)
        self.plane = DataPlane(self.registry, RequestMetrics(families) if families else NullRequestMetrics(),
                               settings.streams.max_id_length, RESTRICTIONS)
        self._tag = "<model>"
        try:
            for name, version in model_list(settings):
                self._tag = f"{name}:{version}"
                self.registry.add(build(name, version))
        except Exception as exc:  # cannot serve: stop the server, don't let BentoML restart us forever
            startup.abort(exc, self._tag)

    @bentoml.on_startup
    async def start_transports(self) -> None:
        from .transports.grpc import GrpcServer

        server = self.settings.server
        if server.grpc_port:
            try:
                self.grpc = GrpcServer(self.plane, server, self.settings.limits.max_body_bytes)
                await self.grpc.start()
            except Exception as exc:
                startup.abort(exc, self._tag)
        self._warm_task = asyncio.create_task(self._warm_up())
        if self.settings.drift.enabled:
            self._drift_task = asyncio.create_task(self._drift_loop())

    async def _drift_loop(self) -> None:
        """Drift statistics on a schedule, in a worker thread: never on the request path."""
        while True:
            await asyncio.sleep(self.settings.drift.interval_s)
            for core in self.registry.cores():
                try:
                    await asyncio.to_thread(core.evaluate_drift)
                except Exception:
                    log.exception("drift evaluation of %s:%s failed; will retry", core.info.name, core.info.version)

    async def _warm_up(self) -> None:
        try:
            await self.registry.warm_up()
        except Exception as exc:
            startup.abort(exc, self._tag)
        tune_gc()
        if self.grpc is not None:
            await self.grpc.set_serving(True)

    async def __is_ready__(self) -> bool:
        return self.registry.ready

    @bentoml.on_shutdown
    async def stop_transports(self) -> None:
        if self._drift_task is not None:
            self._drift_task.cancel()
        grace = self.settings.server.request_timeout_s
        if self.grpc is not None:
            await self.grpc.set_serving(False)
        await self.registry.close(timeout=grace)
        if self.grpc is not None:
            await self.grpc.stop(grace=grace)


RNNService.add_asgi_middleware(InferenceFastPath, http_app=HTTP_APP)
if RESTRICTIONS:  # BentoML's probes and /metrics under the same restrictions (none: no middleware)
    RNNService.add_asgi_middleware(RestrictedSystemRoutes, restrictions=RESTRICTIONS)
