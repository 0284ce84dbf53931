"""The thread-pool gRPC engine: grpc's thread-pool server on loopback, real grpc clients, the
servicer's coroutines run on an event loop of their own thread (as on a worker's loop)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from rnnserve.harness.launch import free_port
from rnnserve.service.transports import grpc_threads


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """Coroutines as ``InferenceServicer`` writes them; records on which thread they ran."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.cancelled = threading.Event()

    async def ServerLive(self, request, context):
        self.threads.add(threading.current_thread().name)
        return pb.ServerLiveResponse(live=dict(context.invocation_metadata()).get("x-key") == "k")

    async def ServerReady(self, request, context):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no key")

    async def ModelReady(self, request, context):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.ModelReadyResponse(ready=True)

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            if request.id == "bad":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
            yield pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request.id))


@pytest.fixture
def served():
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="the-loop", daemon=True)
    runner.start()
    servicer = Servicer()
    health_servicer = health.aio.HealthServicer()

    def add(target):
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, target)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)

    port = free_port()
    server = grpc_threads.server(loop, add, 3, [])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, health_servicer, loop, channel
    finally:
        channel.close()
        server.stop(0).wait()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)


def test_a_unary_coroutine_runs_on_the_loop_and_sees_the_calls_metadata(served):
    servicer, _, _, channel = served
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), metadata=[("x-key", "k")], timeout=5).live
    assert not stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert servicer.threads == {"the-loop"}


def test_abort_on_the_loop_ends_the_call_with_its_status_and_message(served):
    stub = pb_grpc.GRPCInferenceServiceStub(served[3])
    with pytest.raises(grpc.RpcError) as err:
        stub.ServerReady(pb.ServerReadyRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and err.value.details() == "no key"


def test_methods_the_servicer_does_not_implement_answer_unimplemented(served):
    stub = pb_grpc.GRPCInferenceServiceStub(served[3])
    with pytest.raises(grpc.RpcError) as err:
        stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_client_deadline_cancels_the_coroutine(served):
    servicer, _, _, channel = served
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelReady(pb.ModelReadyRequest(name="m"), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert servicer.cancelled.wait(5)


def test_a_bidirectional_stream_answers_in_order_and_an_abort_ends_it(served):
    stub = pb_grpc.GRPCInferenceServiceStub(served[3])
    ids = [r.infer_response.id for r in stub.ModelStreamInfer(
        iter([pb.ModelInferRequest(id=str(k)) for k in range(20)]), timeout=5)]
    assert ids == [str(k) for k in range(20)]
    replies = stub.ModelStreamInfer(iter([pb.ModelInferRequest(id="1"), pb.ModelInferRequest(id="bad")]), timeout=5)
    assert next(replies).infer_response.id == "1"
    with pytest.raises(grpc.RpcError) as err:
        next(replies)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == "bad request"


def test_health_watch_writes_each_status_change(served):
    _, health_servicer, loop, channel = served
    asyncio.run_coroutine_threadsafe(health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING),
                                     loop).result(5)
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="unknown"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    asyncio.run_coroutine_threadsafe(health_servicer.set("", health_pb2.HealthCheckResponse.SERVING), loop).result(5)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_a_call_past_the_pool_is_refused_at_once_not_left_waiting(served):
    stub = pb_grpc.GRPCInferenceServiceStub(served[3])
    held = [stub.ModelReady.future(pb.ModelReadyRequest(name="m"), timeout=10) for _ in range(3)]  # the pool's 3
    time.sleep(0.3)
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.perf_counter() - started < 2
    for f in held:
        f.cancel()
    deadline = time.time() + 5
    while True:  # the pool frees as the held calls end
        try:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            break
        except grpc.RpcError:
            assert time.time() < deadline
            time.sleep(0.1)
