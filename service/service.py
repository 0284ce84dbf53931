"""The BentoML service (``bentofile.yaml`` points here): ``service.service:RNNService``.

This is the one module with import-time declarations, because BentoML discovers a service by its
decorated class: the class and the mounted transport app are declared here, and nothing else
happens at import. Settings are read, the bundle is loaded and verified, and servers are started
in the worker (``__init__`` / startup hook), never at import.

HTTP (port 3000): ``/predict``, ``/v2/...`` (mounted Starlette app), ``/livez``, ``/readyz``,
``/metrics`` (BentoML). gRPC (port 8001): ``inference.GRPCInferenceService`` + health.
"""

from __future__ import annotations

import asyncio
import logging

import bentoml

from .http_app import build_http_app

log = logging.getLogger("rnnserve.service")


def _current_core():
    return bentoml.get_current_service().core


@bentoml.service(
    name="rnnserve",
    workers=1,
    traffic={"timeout": 60, "max_concurrency": 512},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
@bentoml.asgi_app(build_http_app(_current_core), path="/")
class RNNService:
    def __init__(self) -> None:
        from .core import InferenceCore
        from .settings import Settings

        logging.getLogger("rnnserve").setLevel(logging.INFO)
        self.settings = Settings()
        self.core = InferenceCore(self.settings)
        self.core.prepare()
        self.grpc = None
        self._warm_task: asyncio.Task | None = None
        self._drift_task: asyncio.Task | None = None

    @bentoml.on_startup
    async def start_transports(self) -> None:
        from .grpc_server import GrpcServer

        server = self.settings.server
        if server.grpc_port:
            self.grpc = GrpcServer(self.core, server.host, server.grpc_port, self.settings.limits.max_body_bytes)
            await self.grpc.start()
        self._warm_task = asyncio.create_task(self._warm_up())
        if self.core.drift is not None:
            self._drift_task = asyncio.create_task(self._drift_loop())

    async def _drift_loop(self) -> None:
        """Drift statistics on a schedule, in a worker thread: never on the request path."""
        while True:
            await asyncio.sleep(self.settings.drift.interval_s)
            try:
                await asyncio.to_thread(self.core.evaluate_drift)
            except Exception:
                log.exception("drift evaluation failed; will retry")

    async def _warm_up(self) -> None:
        try:
            await self.core.warm_up()
        except Exception:
            log.exception("warm-up failed: the service stays not-ready")
            return
        if self.grpc is not None:
            await self.grpc.set_serving(True)

    async def __is_ready__(self) -> bool:
        return self.core.ready

    @bentoml.on_shutdown
    async def stop_transports(self) -> None:
        self.core.shutdown()
        if self._drift_task is not None:
            self._drift_task.cancel()
        if self.grpc is not None:
            await self.grpc.stop(grace=self.settings.server.request_timeout_s)
