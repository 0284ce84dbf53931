"""The thread-pool gRPC engine (``RNNSERVE_SERVER__GRPC_THREADS`` > 0): grpc's C-core server with a
pool of threads in front of the same servicers, each call bridged to the worker's event loop.

grpc.aio runs every call's transport work (reading, parsing, writing, its Cython callbacks) on the
event loop, which is also where the data plane and the scheduler run; on one core that work is the
largest part of a small model's per-request cost (docs/BENCHMARKS.md, "Per-request cost"). Here
grpc's threads receive and deserialize a call, the call's coroutine runs on the loop unchanged (the
``InferenceServicer`` and health servicer of ``transports.grpc``), and the thread serializes and
sends the answer. Nothing of the servicers changes: they see a context with the two methods they
use (``invocation_metadata``, ``abort``) and, for a client stream, an async iterator of its requests.

A unary call holds one pool thread while it is answered; a stream (``ModelStreamInfer``, health
``Watch``) holds one pool thread for its life, plus a plain thread that reads a client stream. A call
past the pool's size is refused at once with RESOURCE_EXHAUSTED (grpc's ``maximum_concurrent_rpcs``)
rather than left waiting for a thread that an open stream may hold for hours. A cancelled call
(client gone, deadline) cancels its coroutine."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from concurrent import futures

import grpc

_END = object()


class Abort(Exception):
    """Raised on the loop by ``LoopContext.abort``; the thread ends the call with its status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class LoopContext:
    """What the servicers' coroutines see of a thread-pool call's context: its metadata, ``abort``,
    and for a call that answers with a stream, ``write`` (grpc.aio's way for a coroutine handler)."""

    def __init__(self, context: grpc.ServicerContext, sink=None) -> None:
        self._context = context
        self._sink = sink

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    async def abort(self, code: grpc.StatusCode, details: str = ""):
        raise Abort(code, details)

    async def write(self, message) -> None:
        if self._sink is None:
            raise RuntimeError("write() on a call that does not answer with a stream")
        self._sink(message)


class Bridge:
    """Method handlers for ``grpc.server`` that run the servicers' coroutines on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def handler(self, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kinds = {(False, False): ("unary_unary", self._unary), (True, True): ("stream_stream", self._stream),
                 (False, True): ("unary_stream", self._stream)}
        name, wrap = kinds[(h.request_streaming, h.response_streaming)]
        fn = getattr(h, name)
        if not (asyncio.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            return h  # the generated base class's UNIMPLEMENTED stubs run in the thread as they are
        return h._replace(**{name: wrap(fn, h.request_streaming)})

    def _unary(self, fn, _):
        def call(request, context):
            done = asyncio.run_coroutine_threadsafe(fn(request, LoopContext(context)), self.loop)
            context.add_callback(done.cancel)
            try:
                return done.result()
            except Abort as exc:
                context.abort(exc.code, exc.details)
            except futures.CancelledError:
                return None  # the call already ended (client gone, deadline)

        return call

    def _stream(self, fn, client_streaming: bool):
        def call(request, context):
            replies: queue.Queue = queue.Queue()
            source = self._requests(request, context) if client_streaming else request

            async def pump():
                try:
                    ctx = LoopContext(context, replies.put)
                    if inspect.isasyncgenfunction(fn):
                        async for reply in fn(source, ctx):
                            replies.put(reply)
                    else:  # a coroutine that writes its replies (grpc.aio's health Watch)
                        await fn(source, ctx)
                    replies.put(_END)
                except BaseException as exc:  # Abort, cancellation, a servicer error: the thread ends the call
                    replies.put(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise

            done = asyncio.run_coroutine_threadsafe(pump(), self.loop)
            done.add_done_callback(lambda _: replies.put(_END))  # also when cancelled before it started
            context.add_callback(done.cancel)
            while (item := replies.get()) is not _END:
                if isinstance(item, Abort):
                    context.abort(item.code, item.details)
                if isinstance(item, asyncio.CancelledError):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        return call

    def _requests(self, iterator, context):
        """The client's stream as an async iterator on the loop, read by a thread of its own."""
        loop = self.loop
        inbox: asyncio.Queue = asyncio.Queue()

        def read():
            try:
                for request in iterator:
                    loop.call_soon_threadsafe(inbox.put_nowait, request)
            except Exception:  # the call ended (cancelled, client gone): the stream ends here
                pass
            finally:
                loop.call_soon_threadsafe(inbox.put_nowait, _END)

        threading.Thread(target=read, name="rnnserve-grpc-stream-reader", daemon=True).start()

        async def requests():
            while (request := await inbox.get()) is not _END:
                yield request

        return requests()


class Recorder:
    """Stands in for a server in ``add_*Servicer_to_server``: keeps the generated method handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.services[service] = handlers


def server(loop: asyncio.AbstractEventLoop, add_servicers, threads: int, options) -> grpc.Server:
    """A ``grpc.server`` with ``threads`` pool threads serving what ``add_servicers(server)`` adds,
    each coroutine of it run on ``loop``."""
    recorder = Recorder()
    add_servicers(recorder)
    bridge = Bridge(loop)
    out = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rnnserve-grpc"),
                      options=options, maximum_concurrent_rpcs=threads)
    for service, handlers in recorder.services.items():
        bridged = {name: bridge.handler(h) for name, h in handlers.items()}
        out.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, bridged),))
        out.add_registered_method_handlers(service, bridged)
    return out


__all__ = ["Abort", "Bridge", "LoopContext", "server"]
