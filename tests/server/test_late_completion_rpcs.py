"""A worker that stops normally: the SDKs' stop() cancels the GetWorkItems stream before the work in flight
reports back. The stream's close hands the items back, and a completion that arrives after it is applied,
exactly once, as long as no other worker has taken the item since; on any replica."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import PARTITIONS, eventually, next_work, rpc_error


@pytest.fixture
async def config(redis_url, key_prefix, hub_name) -> dict:
    # leases that do not expire during a test: only the stream's close hands work back
    return dict(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                health_ping_seconds=0.2, lease_seconds=30.0)


@pytest.fixture
async def app(start_app, config):
    return await start_app(**config)


@pytest.fixture
async def other(start_app, config):
    """A second replica of the same hub."""
    return await start_app(**config)


@pytest.fixture
async def other_stub(other):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        yield pb_grpc.TaskHubSidecarServiceStub(channel)


async def stop_worker(app, call) -> None:
    """Cancel the stream as the SDK's stop() does, and wait until the replica has handed its work back."""
    call.cancel()
    await eventually(lambda: asyncio.sleep(0, not app.engine.dispatcher.all_streams()))


def hub_keys(app):
    return app.store.cached_hub(app.config.task_hub)


async def nothing_queued_or_leased(app, item: str) -> bool:
    """The item is on no work queue of its partition and under no lease."""
    pk = hub_keys(app).for_instance(item)
    r = app.store.redis
    return (await r.zscore(pk.ready, item) is None and await r.zscore(pk.entities, item) is None
            and await r.zcard(pk.activities) == 0 and await r.zcard(pk.leases) == 0)


def completed(token: str, output: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value=output)))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)


async def test_an_episode_completed_after_its_stream_closed_is_applied_once(app, stub, other_stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="late", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    episode = await next_work(call)
    await stop_worker(app, call)
    await other_stub.CompleteOrchestratorTask(completed(episode.completionToken, '"done"'))  # another replica
    state = (await stub.GetInstance(pb.GetInstanceRequest(instanceId="late", getInputsAndOutputs=True))
             ).orchestrationState
    assert (state.orchestrationStatus, state.output.value) == (pb.ORCHESTRATION_STATUS_COMPLETED, '"done"')
    assert await nothing_queued_or_leased(app, "late")  # not run again
    await rpc_error(stub.CompleteOrchestratorTask(completed(episode.completionToken, '"again"')),
                    grpc.StatusCode.FAILED_PRECONDITION)


async def test_an_activity_result_after_its_stream_closed_is_applied_once(app, stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="act", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    episode = await next_work(call)
    schedule = pb.OrchestratorAction(id=1, scheduleTask=pb.ScheduleTaskAction(name="Act"))
    await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(instanceId="act", actions=[schedule],
                                                                completionToken=episode.completionToken))
    activity = await next_work(call)
    assert activity.HasField("activityRequest")
    await stop_worker(app, call)
    await stub.CompleteActivityTask(pb.ActivityResponse(instanceId="act", taskId=1,
                                                        result=wrappers_pb2.StringValue(value='"r"'),
                                                        completionToken=activity.completionToken))
    pk = hub_keys(app).for_instance("act")
    assert await app.store.redis.zcard(pk.activities) == 0  # not run again
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    nxt = await next_work(call)  # the orchestration's next episode, with the result
    assert nxt.orchestratorRequest.instanceId == "act"
    assert [e.taskCompleted.result.value for e in nxt.orchestratorRequest.newEvents
            if e.HasField("taskCompleted")] == ['"r"']
    call.cancel()


async def test_an_entity_batch_after_its_stream_closed_is_applied_once(app, stub):
    await stub.SignalEntity(pb.SignalEntityRequest(instanceId="@counter@late", name="add", requestId="r1",
                                                   input=wrappers_pb2.StringValue(value="1")))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    batch = await next_work(call)
    assert batch.HasField("entityRequestV2")
    await stop_worker(app, call)
    assert (await stub.GetEntity(pb.GetEntityRequest(instanceId="@counter@late"))).entity.backlogQueueSize == 1
    await stub.CompleteEntityTask(pb.EntityBatchResult(completionToken=batch.completionToken,
                                                       results=[pb.OperationResult(success=pb.OperationResultSuccess())],
                                                       entityState=wrappers_pb2.StringValue(value="1")))
    reply = await stub.GetEntity(pb.GetEntityRequest(instanceId="@counter@late", includeState=True))
    assert reply.entity.serializedState.value == "1" and reply.entity.backlogQueueSize == 0
    assert await nothing_queued_or_leased(app, "@counter@late")  # the signal is not applied twice


async def test_a_late_completion_after_another_worker_took_the_item_is_refused(app, stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="taken", name="Orch"))
    first = stub.GetWorkItems(pb.GetWorkItemsRequest())
    old = await next_work(first)
    await stop_worker(app, first)
    second = stub.GetWorkItems(pb.GetWorkItemsRequest())
    new = await next_work(second)
    assert new.orchestratorRequest.instanceId == "taken" and new.completionToken != old.completionToken
    await rpc_error(stub.CompleteOrchestratorTask(completed(old.completionToken, '"old"')),
                    grpc.StatusCode.FAILED_PRECONDITION)
    await stub.CompleteOrchestratorTask(completed(new.completionToken, '"new"'))
    state = (await stub.GetInstance(pb.GetInstanceRequest(instanceId="taken", getInputsAndOutputs=True))
             ).orchestrationState
    assert state.output.value == '"new"'
    second.cancel()


async def test_work_handed_back_by_a_draining_replica_is_completed_on_another(app, stub, other, other_stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="drained", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    episode = await next_work(call)
    await app.engine.dispatcher.drain(0.0)  # shutting down: what is held goes back, the stream ends
    await other_stub.CompleteOrchestratorTask(completed(episode.completionToken, '"done"'))
    state = (await other_stub.GetInstance(pb.GetInstanceRequest(instanceId="drained"))).orchestrationState
    assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    assert await nothing_queued_or_leased(other, "drained")
