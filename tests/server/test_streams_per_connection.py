"""A bound on the calls one client connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS,
--max-streams-per-connection, default 100), for every service: health Watch streams need no token and each
costs the server memory. A client's calls past the bound wait in the client until one ends, they do not
fail; another connection is not affected; a worker's stream and its completions on one channel still work."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.config import Config
from server_helpers import next_work

LIMIT = Config().max_streams_per_connection
# Long enough for a call on an idle local connection to be answered many times over; only used to
# observe that a call has NOT been answered (nothing waits on it to happen).
NOT_ANSWERED_WITHIN = 0.5


def own_connection(port: int) -> grpc.aio.Channel:
    """A channel with a connection of its own (grpc shares connections of channels with the same options)."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
async def watches(app) -> AsyncIterator[tuple[grpc.aio.Channel, list]]:
    """A connection holding LIMIT health Watch streams, each past its first answer (open on the server)."""
    async with own_connection(app.port) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        calls = [health.Watch(health_pb2.HealthCheckRequest(service="liveness")) for _ in range(LIMIT)]
        for call in calls:
            reply = await asyncio.wait_for(call.read(), 10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        try:
            yield channel, calls
        finally:
            for call in calls:
                call.cancel()


def test_the_default_bound_leaves_room_for_a_worker():
    assert 2 <= LIMIT <= 1000
    with pytest.raises(ValueError, match="--max-streams-per-connection"):
        Config(max_streams_per_connection=1)


async def test_a_call_past_the_bound_waits_for_a_stream_to_end_and_then_succeeds(app, watches):
    channel, calls = watches
    stub = pb_grpc.TaskHubSidecarServiceStub(channel)
    queued = asyncio.ensure_future(stub.GetInstance(pb.GetInstanceRequest(instanceId="x"), timeout=30))
    extra_watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="liveness"))
    extra = asyncio.ensure_future(extra_watch.read())
    finished, _ = await asyncio.wait({queued, extra}, timeout=NOT_ANSWERED_WITHIN)
    assert not finished, "a call past the bound was served on the same connection"

    async with own_connection(app.port) as other:  # another connection is not affected
        assert not (await pb_grpc.TaskHubSidecarServiceStub(other).GetInstance(
            pb.GetInstanceRequest(instanceId="x"), timeout=5)).exists
        reply = await health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(service="liveness"),
                                                              timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    calls[0].cancel()  # one stream ends: one waiting call goes
    calls[1].cancel()  # and another
    reply = await asyncio.wait_for(queued, 10)
    assert not reply.exists  # served, not failed
    assert (await asyncio.wait_for(extra, 10)).status == health_pb2.HealthCheckResponse.SERVING
    extra_watch.cancel()


async def test_a_worker_stream_and_more_concurrent_completions_than_the_bound_all_succeed(app):
    """The SDK's use: one channel, a GetWorkItems stream, and up to its maximum_concurrent_* work items each
    answered by a unary call on the same channel: those past the bound queue in the client, none fails."""
    async with own_connection(app.port) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        count = LIMIT + LIMIT // 2
        await asyncio.gather(*(stub.StartInstance(pb.CreateInstanceRequest(instanceId=f"w{i}", name="Orch"), timeout=30)
                               for i in range(count)))
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=count))
        try:
            items = [await next_work(stream, timeout=10) for _ in range(count)]
            abandons = [stub.AbandonTaskOrchestratorWorkItem(pb.AbandonOrchestrationTaskRequest(
                completionToken=item.completionToken), timeout=30) for item in items]
            await asyncio.gather(*abandons)  # any failure raises
        finally:
            stream.cancel()
