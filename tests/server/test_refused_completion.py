"""A completion refused while Redis is away (UNAVAILABLE, or its outcome unknown) makes the SDK worker give up
on the item: the replica stops holding it for that worker's stream and hands it back once Redis answers, so
another episode runs it; a completion retried meanwhile still applies if nobody took the item."""
from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import PARTITIONS, eventually, next_work, own_redis_server

PASSING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)  # nothing written / outcome unknown


def completed(token: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value='"ok"')))
    return pb.OrchestratorResponse(instanceId="held", actions=[action], completionToken=token)


@pytest.fixture
async def outage(start_app, key_prefix, hub_name):
    """(app, stub, Redis server, a client of it): leases of 30 s, renewed while the stream lives, so only a
    hand-back can make the work item go to a worker again within a test."""
    with own_redis_server() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                              health_ping_seconds=0.2, lease_seconds=30.0)
        observer = aioredis.Redis.from_url(url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, pb_grpc.TaskHubSidecarServiceStub(channel), server, observer
        await observer.aclose()


async def refused_while_redis_is_away(server, observer, stub, token: str, meanwhile=None) -> None:
    await observer.save()  # what Redis holds comes back with it
    server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.CompleteOrchestratorTask(completed(token), timeout=10)
    assert e.value.code() in PASSING, e.value.details()
    if meanwhile is not None:
        await meanwhile()
    server.start()  # same port, same data


async def test_an_item_whose_completion_was_refused_is_handed_out_again_once_redis_answers(outage):
    app, stub, server, observer = outage
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="held", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    first = await next_work(call)
    await refused_while_redis_is_away(server, observer, stub, first.completionToken)
    # the worker gave up on it; its stream is still open: the episode goes to a worker again
    again = await next_work(call, timeout=20)
    assert again.orchestratorRequest.instanceId == "held" and again.completionToken != first.completionToken
    await stub.CompleteOrchestratorTask(completed(again.completionToken), timeout=10)
    assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="held"))).orchestrationState \
        .orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    call.cancel()


async def test_a_completion_retried_after_the_hand_back_still_applies(outage):
    app, stub, server, observer = outage
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="held", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=1))
    first = await next_work(call)
    hub = app.store.cached_hub(app.config.task_hub)
    pk = hub.for_instance("held")

    async def stop_worker() -> None:  # the worker stops while Redis is away: nobody takes the item meanwhile
        call.cancel()
        await eventually(lambda: asyncio.sleep(0, not app.engine.dispatcher.all_streams()))

    await refused_while_redis_is_away(server, observer, stub, first.completionToken, stop_worker)

    async def handed_back() -> bool:
        try:
            return await observer.zscore(pk.ready, "held") is not None
        except (ConnectionError, OSError, aioredis.ConnectionError):
            return False
    await eventually(handed_back, timeout=20, interval=0.05)
    await stub.CompleteOrchestratorTask(completed(first.completionToken), timeout=10)  # the worker retries
    assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="held"))).orchestrationState \
        .orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    assert await observer.zscore(pk.ready, "held") is None and await observer.zcard(pk.leases) == 0
