"""The worker protocol over a real port: GetWorkItems, CompleteOrchestratorTask, abandon, leases."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2
from prometheus_client import REGISTRY

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.engine import waiters as waiters_module
from scheduler.engine.streams import WorkStream
from scheduler.protocol import ACTIVITY
from scheduler.store.keys import partition_of
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import PARTITIONS, eventually, next_work, rpc_error


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                           health_ping_seconds=0.2, lease_seconds=1.0)


async def status_of(stub, iid: str) -> int:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid, getInputsAndOutputs=True))
    return reply.orchestrationState.orchestrationStatus


async def in_ready(app, iid: str) -> bool:
    hub = app.store.cached_hub(app.config.task_hub)
    return await app.store.redis.zscore(hub.for_instance(iid).ready, iid) is not None


def done(token: str, output: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value=output)))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)


async def test_a_ready_instance_is_handed_out_and_its_completion_applied(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="w1", name="Orch",
                                                      input=wrappers_pb2.StringValue(value='"in"')))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    item = await next_work(call)
    req = item.orchestratorRequest
    assert req.instanceId == "w1" and not req.pastEvents
    assert [e.WhichOneof("eventType") for e in req.newEvents] == ["orchestratorStarted", "executionStarted"]
    assert req.newEvents[1].executionStarted.input.value == '"in"'
    assert await status_of(stub, "w1") == pb.ORCHESTRATION_STATUS_RUNNING

    await stub.CompleteOrchestratorTask(done(item.completionToken, '"out"'))
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId="w1", getInputsAndOutputs=True))
    state = reply.orchestrationState
    assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    assert (state.input.value, state.output.value) == ('"in"', '"out"')  # the start event moved to the history
    assert state.HasField("completedTimestamp")
    history = [e async for chunk in stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId="w1"))
               for e in chunk.events]
    assert [e.WhichOneof("eventType") for e in history] == ["orchestratorStarted", "executionStarted",
                                                            "executionCompleted"]
    call.cancel()


async def test_a_stale_token_changes_nothing_and_says_so(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="w2", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    item = await next_work(call)
    message = await rpc_error(stub.CompleteOrchestratorTask(done(item.completionToken + "0", '"x"')),
                              grpc.StatusCode.FAILED_PRECONDITION)
    assert "w2" in message and "lease" in message
    assert await status_of(stub, "w2") == pb.ORCHESTRATION_STATUS_RUNNING
    await rpc_error(stub.CompleteOrchestratorTask(done("garbage", '"x"')), grpc.StatusCode.INVALID_ARGUMENT)
    await stub.CompleteOrchestratorTask(done(item.completionToken, '"ok"'))  # the real one still works
    assert await status_of(stub, "w2") == pb.ORCHESTRATION_STATUS_COMPLETED
    await rpc_error(stub.CompleteOrchestratorTask(done(item.completionToken, '"again"')),
                    grpc.StatusCode.FAILED_PRECONDITION)  # applied once only
    call.cancel()


async def test_an_idle_stream_sends_health_pings(stub):
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    started = time.monotonic()
    item = await asyncio.wait_for(call.read(), 5)
    assert item.HasField("healthPing")
    assert time.monotonic() - started < 2
    call.cancel()


async def test_closing_the_stream_hands_the_work_back_at_once(stub, app):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="w3", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    await next_work(call)
    assert not await in_ready(app, "w3")
    call.cancel()
    await eventually(lambda: in_ready(app, "w3"), timeout=0.9)  # well before the 1 s lease runs out


async def test_abandon_hands_the_work_back(stub, app):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="w4", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=1))
    item = await next_work(call)
    await stub.AbandonTaskOrchestratorWorkItem(pb.AbandonOrchestrationTaskRequest(completionToken=item.completionToken))
    again = await next_work(call)  # handed out again, with a new claim
    assert again.orchestratorRequest.instanceId == "w4" and again.completionToken != item.completionToken
    call.cancel()


async def test_a_lease_that_is_not_renewed_expires_and_is_swept(stub, app):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="w5", name="Orch"))
    hub = app.store.cached_hub(app.config.task_hub)
    # A claim nobody renews: what a replica that died leaves behind.
    claim = await app.store.claim_orchestration(hub, "w5", "t|0|o|w5|dead", 300, b"")
    assert claim is not None and not await in_ready(app, "w5")

    def expired() -> float:
        return REGISTRY.get_sample_value("dt_leases_expired_total", {"hub": hub.hub}) or 0.0

    before = expired()

    async def swept() -> bool:
        await app.sweep_leases()
        return await in_ready(app, "w5")

    await eventually(swept, timeout=5)
    # Counted once, whichever sweep (this one or the housekeeping's) re-queued it.
    async def counted() -> bool:
        return expired() == before + 1

    await eventually(counted, timeout=5)


def schedule(token: str, *task_ids: int) -> pb.OrchestratorResponse:
    actions = [pb.OrchestratorAction(id=t, scheduleTask=pb.ScheduleTaskAction(
        name="Act", input=wrappers_pb2.StringValue(value=str(t)))) for t in task_ids]
    return pb.OrchestratorResponse(actions=actions, completionToken=token)


async def test_an_activity_result_reaches_its_orchestration_once(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="a1", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    episode = await next_work(call)
    await stub.CompleteOrchestratorTask(schedule(episode.completionToken, 7))
    work = await next_work(call)
    request = work.activityRequest
    assert (request.name, request.taskId, request.input.value) == ("Act", 7, "7")
    assert request.orchestrationInstance.instanceId == "a1"

    done_activity = pb.ActivityResponse(instanceId="a1", taskId=7, result=wrappers_pb2.StringValue(value='"r"'),
                                        completionToken=work.completionToken)
    await stub.CompleteActivityTask(done_activity)
    await rpc_error(stub.CompleteActivityTask(done_activity), grpc.StatusCode.FAILED_PRECONDITION)  # once only

    second = await next_work(call)  # the orchestration runs again with the result
    req = second.orchestratorRequest
    assert [e.WhichOneof("eventType") for e in req.pastEvents] == ["orchestratorStarted", "executionStarted",
                                                                   "taskScheduled"]
    assert [e.WhichOneof("eventType") for e in req.newEvents] == ["orchestratorStarted", "taskCompleted"]
    assert req.newEvents[1].taskCompleted.taskScheduledId == 7
    assert req.newEvents[1].taskCompleted.result.value == '"r"'
    call.cancel()


async def test_abandoned_and_orphaned_activities_go_back_to_the_queue(stub, app):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="a2", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentActivityWorkItems=1))
    episode = await next_work(call)
    await stub.CompleteOrchestratorTask(schedule(episode.completionToken, 1))
    first = await next_work(call)
    await stub.AbandonTaskActivityWorkItem(pb.AbandonActivityTaskRequest(completionToken=first.completionToken))
    again = await next_work(call)
    assert again.activityRequest.taskId == 1 and again.completionToken != first.completionToken
    call.cancel()  # the worker goes away holding it: it is queued again at once
    hub = app.store.cached_hub(app.config.task_hub)

    async def queued() -> bool:
        return bool(await app.store.queued(hub, ACTIVITY, partition_of("a2", hub.partitions), 10))

    await eventually(queued, timeout=0.9)


async def test_an_episode_past_the_history_limit_fails_the_instance_clearly(start_app, redis_url, key_prefix,
                                                                            hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          max_history_events=10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="big", name="Orch"))
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        episode = await next_work(call)
        await stub.CompleteOrchestratorTask(schedule(episode.completionToken, *range(1, 21)))
        reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId="big"))
        state = reply.orchestrationState
        assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
        assert state.failureDetails.errorType == "HistoryLimitExceeded"
        assert "limit is 10" in state.failureDetails.errorMessage
        hub = app.store.cached_hub(hub_name)
        assert not await app.store.queued(hub, ACTIVITY, partition_of("big", hub.partitions), 50)
        call.cancel()


async def _app_without_wake_ups(start_app, redis_url, key_prefix, hub_name, monkeypatch):
    """A replica whose pub/sub work wake-ups are lost and whose streams send no ping within a test."""
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          health_ping_seconds=60.0)
    monkeypatch.setattr(app.engine.dispatcher, "work_available", lambda hub, queue=None: None)  # wake-ups lost
    return app


async def test_work_made_ready_here_is_offered_to_a_stream_without_any_wake_up(start_app, redis_url, key_prefix,
                                                                              hub_name, monkeypatch):
    """A started instance, the activities its episode queued and the activity's result reach this replica's
    stream at once, with pub/sub wake-ups lost and no periodic look within the test's time."""
    app = await _app_without_wake_ups(start_app, redis_url, key_prefix, hub_name, monkeypatch)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await eventually(lambda: _streams_idle(app))  # its first looks are done: from now on it only waits
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="offered", name="Orch"))
        episode = await next_work(call)
        assert episode.orchestratorRequest.instanceId == "offered"
        await stub.CompleteOrchestratorTask(schedule(episode.completionToken, 1))
        activity = await next_work(call)
        assert activity.activityRequest.taskId == 1
        await stub.CompleteActivityTask(pb.ActivityResponse(instanceId="offered", taskId=1,
                                                            completionToken=activity.completionToken))
        again = await next_work(call)
        assert [e.WhichOneof("eventType") for e in again.orchestratorRequest.newEvents] == \
            ["orchestratorStarted", "taskCompleted"]
        # a scheduledStartTimestamp of 1970 (the JS SDK sends it for "now") or in the past: the same path
        for instance_id, seconds in (("epoch", 0), ("past", int(time.time()) - 60)):
            await stub.StartInstance(pb.CreateInstanceRequest(
                instanceId=instance_id, name="Orch", scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=seconds)))
            episode = await next_work(call)
            assert episode.orchestratorRequest.instanceId == instance_id
        call.cancel()


async def _streams_idle(app) -> bool:
    streams = app.engine.dispatcher.streams(app.config.task_hub)
    return bool(streams) and all(not lane.look for s in streams for lane in s.lanes.values())  # nothing to look at


async def test_a_completion_here_wakes_this_replicas_waiters_without_pub_sub(start_app, redis_url, key_prefix,
                                                                            hub_name, monkeypatch):
    monkeypatch.setattr(waiters_module, "RECHECK_SECONDS", 60.0)
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    heard = app.engine.wakeups.route  # drop every status message this replica hears
    monkeypatch.setattr(app.engine.wakeups, "route", lambda w: None if w.kind == "status" else heard(w))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="waited", name="Orch",
                                                          input=wrappers_pb2.StringValue(value='"in"')))
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        episode = await next_work(call)
        waiter = asyncio.ensure_future(stub.WaitForInstanceCompletion(
            pb.GetInstanceRequest(instanceId="waited", getInputsAndOutputs=True), timeout=30))
        await eventually(lambda: _watched(app, "waited"))
        reads = _counted(monkeypatch, app.store, "get_instance")
        await stub.CompleteOrchestratorTask(done(episode.completionToken, '"fin"'))
        reply = await asyncio.wait_for(waiter, 5)
        state = reply.orchestrationState
        assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
        assert (state.input.value, state.output.value) == ('"in"', '"fin"')
        assert reads == []  # the completion handed the waiter the final state: no read after it
        call.cancel()


async def _watched(app, instance_id: str) -> bool:
    return any(iid == instance_id for _, iid in app.engine.waiters._waiting)  # noqa: SLF001 - a waiter registered


def _counted(monkeypatch, store, method: str) -> list[str]:
    """The items (second argument) of every call of ``store.<method>`` from now on."""
    items: list[str] = []
    real = getattr(store, method)

    async def counting(hub, item, *args):
        items.append(item)
        return await real(hub, item, *args)

    monkeypatch.setattr(store, method, counting)
    return items


async def _activities_after_an_episode(app, monkeypatch) -> tuple[list[int], list[str]]:
    """Run one episode that schedules two activities on a stream of ``app``: (the task ids the stream
    handed out, the items a stream claimed from the queue)."""
    claimed = _counted(monkeypatch, app.store, "claim_activity")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="adopted", name="Orch"))
        episode = await next_work(call)
        await stub.CompleteOrchestratorTask(schedule(episode.completionToken, 1, 2))
        activities = [await next_work(call), await next_work(call)]
        for activity in activities:  # the tokens handed out are the current claims
            await stub.CompleteActivityTask(pb.ActivityResponse(
                instanceId="adopted", taskId=activity.activityRequest.taskId, completionToken=activity.completionToken))
        call.cancel()
    return sorted(a.activityRequest.taskId for a in activities), claimed


async def test_activities_of_an_episode_completed_here_reach_a_stream_here_claimed_by_the_completion(
        start_app, redis_url, key_prefix, hub_name, monkeypatch):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    tasks, claimed = await _activities_after_an_episode(app, monkeypatch)
    assert tasks == [1, 2]
    assert claimed == []  # no claim of its own: the completion's script claimed them for the stream


async def test_activities_claimed_for_a_stream_that_closed_meanwhile_go_back_to_the_queue(
        start_app, redis_url, key_prefix, hub_name, monkeypatch):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    monkeypatch.setattr(WorkStream, "adopt", lambda self, kind, count, claimed: False)  # as if it had closed
    tasks, claimed = await _activities_after_an_episode(app, monkeypatch)
    assert tasks == [1, 2]  # handed back, then claimed from the queue as any queued work
    assert len(claimed) >= 2


async def test_episodes_a_start_or_an_activity_result_make_ready_here_reach_a_stream_here_claimed_by_that_step(
        start_app, redis_url, key_prefix, hub_name, monkeypatch):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    claimed = _counted(monkeypatch, app.store, "claim_orchestration")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await eventually(lambda: _streams_idle(app))  # the stream is open before the start
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="next", name="Orch"))
        episode = await next_work(call)
        await stub.CompleteOrchestratorTask(schedule(episode.completionToken, 1))
        activity = await next_work(call)
        claims_before_result = len(claimed)
        await stub.CompleteActivityTask(pb.ActivityResponse(instanceId="next", taskId=1,
                                                            completionToken=activity.completionToken))
        again = await next_work(call)
        assert [e.WhichOneof("eventType") for e in again.orchestratorRequest.newEvents] == \
            ["orchestratorStarted", "taskCompleted"]
        assert claims_before_result == 0  # the start claimed it for this stream in its own step
        assert len(claimed) == 0  # and so did the result
        await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(  # under the claim it was handed out with
            instanceId="next", completionToken=again.completionToken, actions=[pb.OrchestratorAction(
                id=2, completeOrchestration=pb.CompleteOrchestrationAction(
                    orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED))]))
        state = (await stub.GetInstance(pb.GetInstanceRequest(instanceId="next"))).orchestrationState
        assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
        call.cancel()


async def test_an_event_raised_during_an_episode_reaches_the_stream_that_ran_it_without_any_wake_up(
        start_app, redis_url, key_prefix, hub_name, monkeypatch):
    """The completion of the episode makes the instance ready again and offers it; the stream that still
    holds the finishing episode claims the next one (no pub/sub, no safety look within the test's time)."""
    app = await _app_without_wake_ups(start_app, redis_url, key_prefix, hub_name, monkeypatch)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await eventually(lambda: _streams_idle(app))
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="busy", name="Orch"))
        for n in range(3):  # each episode gets the event raised while it ran
            episode = await next_work(call)
            await stub.RaiseEvent(pb.RaiseEventRequest(instanceId="busy", name=f"e{n}"))
            await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(instanceId="busy",
                                                                        completionToken=episode.completionToken))
        last = await next_work(call)
        assert [e.WhichOneof("eventType") for e in last.orchestratorRequest.newEvents] == \
            ["orchestratorStarted", "eventRaised"]
        call.cancel()
