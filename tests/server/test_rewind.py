"""RewindInstance over a real port, with a hand-driven worker that rewrites the history as the SDK does."""
from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import MAX_PAYLOAD, rpc_error, snapshot


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=4,
                           max_payload_bytes=MAX_PAYLOAD, health_ping_seconds=0.2, lease_seconds=5.0)


def text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def kinds(events) -> list[str]:
    return [e.WhichOneof("eventType") for e in events]


class Worker:
    """One GetWorkItems stream; items are read in order, kept aside until a test asks for their kind."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        self.kept: list[pb.WorkItem] = []

    async def next(self, kind: str = "orchestratorRequest", timeout: float = 5.0, of: str = "") -> pb.WorkItem:
        """The next work item of ``kind`` (of instance ``of``, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.kept:
                if item.HasField(kind) and (not of or getattr(item, kind).instanceId == of):
                    self.kept.remove(item)
                    return item
            item = await asyncio.wait_for(self.call.read(), max(deadline - time.monotonic(), 0.01))
            assert item is not grpc.aio.EOF
            if not item.HasField("healthPing"):
                self.kept.append(item)

    async def complete(self, item: pb.WorkItem, *actions: pb.OrchestratorAction) -> None:
        await self.stub.CompleteOrchestratorTask(pb.OrchestratorResponse(
            instanceId=item.orchestratorRequest.instanceId, actions=actions, completionToken=item.completionToken))


@pytest.fixture
def worker(stub):
    w = Worker(stub)
    yield w
    w.call.cancel()


def failing(message: str = "boom") -> pb.OrchestratorAction:
    return pb.OrchestratorAction(id=9, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_FAILED,
        failureDetails=pb.TaskFailureDetails(errorType="Boom", errorMessage=message)))


def rewrite(req: pb.OrchestratorRequest, execution_id: str) -> pb.OrchestratorAction:
    """The SDK's rewind (durabletask worker ``_build_rewind_result``): the history without failed tasks, the
    schedules of failed activities and the end, under a new execution id (and the parent's new one)."""
    events = [*req.pastEvents, *req.newEvents]
    rewound = req.newEvents[-1].executionRewound
    failed = {e.taskFailed.taskScheduledId for e in events if e.HasField("taskFailed")}
    history = []
    for e in events:
        if e.HasField("taskFailed") or e.HasField("subOrchestrationInstanceFailed") or \
                e.HasField("executionCompleted") or (e.HasField("taskScheduled") and e.eventId in failed):
            continue
        e = pb.HistoryEvent().FromString(e.SerializeToString())
        if e.HasField("executionStarted"):
            e.executionStarted.orchestrationInstance.executionId.value = execution_id
            if rewound.parentExecutionId.value and e.executionStarted.HasField("parentInstance"):
                e.executionStarted.parentInstance.orchestrationInstance.executionId.value = \
                    rewound.parentExecutionId.value
        history.append(e)
    return pb.OrchestratorAction(id=-1, rewindOrchestration=pb.RewindOrchestrationAction(newHistory=history))


async def state(stub, iid: str) -> pb.OrchestrationState:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid, getInputsAndOutputs=True))
    assert reply.exists
    return reply.orchestrationState


async def history(stub, iid: str) -> list[pb.HistoryEvent]:
    return [e async for chunk in stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId=iid))
            for e in chunk.events]


async def failed_instance(stub, worker: Worker, iid: str) -> pb.OrchestrationState:
    """An instance that ran one episode and failed in it."""
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch", input=text('"in"')))
    item = await worker.next()
    await worker.complete(item, failing())
    failed = await state(stub, iid)
    assert failed.orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
    return failed


def keys_of(app, iid: str):
    hub = app.store.cached_hub(app.config.task_hub)
    return hub.for_instance(iid)


async def unleased_snapshot(redis, prefix: str) -> dict[str, object]:
    """Every key but the leases, which a live stream renews."""
    return {k: v for k, v in (await snapshot(redis, prefix)).items() if not k.endswith(":leases")}


async def stats(redis, pk) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(pk.stats)).items() if int(v)}


# -- RewindInstance ------------------------------------------------------------------------------


async def test_an_unknown_instance_is_not_found(stub):
    message = await rpc_error(stub.RewindInstance(pb.RewindInstanceRequest(instanceId="nobody")),
                              grpc.StatusCode.NOT_FOUND)
    assert "nobody" in message
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="somebody", name="Orch"))  # the hub exists now
    await rpc_error(stub.RewindInstance(pb.RewindInstanceRequest(instanceId="nobody")), grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("instance_id", ["", "x" * 257, "bad\nid"])
async def test_a_bad_id_is_an_invalid_argument_and_writes_nothing(stub, redis, key_prefix, instance_id):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="somebody", name="Orch"))
    before = await snapshot(redis, key_prefix)
    await rpc_error(stub.RewindInstance(pb.RewindInstanceRequest(instanceId=instance_id)),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert await snapshot(redis, key_prefix) == before


async def test_only_a_failed_instance_is_rewound(stub, redis, key_prefix, worker):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="pending", name="Orch",
                                                      scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=4 << 30)))
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="running", name="Orch"))
    item = await worker.next()
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="done", name="Orch"))
    done = await worker.next()
    await worker.complete(done, pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=text('"ok"'))))
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="stopped", name="Orch",
                                                      scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=4 << 30)))
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="stopped"))
    before = await unleased_snapshot(redis, key_prefix)
    for iid, status in (("pending", "PENDING"), ("running", "RUNNING"), ("done", "COMPLETED"),
                        ("stopped", "TERMINATED")):
        message = await rpc_error(stub.RewindInstance(pb.RewindInstanceRequest(instanceId=iid, reason=text("why"))),
                                  grpc.StatusCode.FAILED_PRECONDITION)
        assert iid in message and status in message and "only a failed instance" in message
    assert await unleased_snapshot(redis, key_prefix) == before
    assert item.orchestratorRequest.instanceId == "running"


async def test_a_reason_over_the_payload_limit_is_refused(stub, redis, key_prefix, worker):
    await failed_instance(stub, worker, "big-reason")
    before = await unleased_snapshot(redis, key_prefix)
    await rpc_error(stub.RewindInstance(pb.RewindInstanceRequest(instanceId="big-reason",
                                                                 reason=text("x" * (MAX_PAYLOAD + 1)))),
                    grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert await unleased_snapshot(redis, key_prefix) == before


async def test_rewind_makes_a_failed_instance_running_in_one_step(stub, app, redis, worker):
    failed = await failed_instance(stub, worker, "rw")
    pk = keys_of(app, "rw")
    assert await stats(redis, pk) == {"FAILED": 1}
    assert await redis.zscore(pk.by_completed, "rw") is not None
    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="rw", reason=text("fixed it")))

    rewound = await state(stub, "rw")
    assert rewound.orchestrationStatus == pb.ORCHESTRATION_STATUS_RUNNING
    assert not rewound.HasField("completedTimestamp") and not rewound.HasField("failureDetails")
    assert not rewound.HasField("output")
    assert rewound.input.value == '"in"' and rewound.executionId == failed.executionId  # until the worker rewinds
    assert await stats(redis, pk) == {"RUNNING": 1}
    assert await redis.zscore(pk.by_completed, "rw") is None
    inbox = [pb.HistoryEvent.FromString(e) for e in await redis.lrange(pk.inbox("rw"), 0, -1)]
    assert kinds(inbox) == ["executionRewound"] and inbox[0].executionRewound.reason.value == "fixed it"
    assert abs(inbox[0].timestamp.ToMilliseconds() - time.time() * 1000) < 5000
    assert len(await history(stub, "rw")) == 3  # untouched until the worker rewinds it

    item = await worker.next()  # made ready: handed out with the rewind event alone
    req = item.orchestratorRequest
    assert kinds(req.pastEvents) == ["orchestratorStarted", "executionStarted", "executionCompleted"]
    assert kinds(req.newEvents) == ["orchestratorStarted", "executionRewound"]


async def test_a_waiter_sees_the_rewound_instance_complete(stub, app, worker):
    await failed_instance(stub, worker, "wt")
    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="wt"))
    waiter = asyncio.ensure_future(stub.WaitForInstanceCompletion(
        pb.GetInstanceRequest(instanceId="wt", getInputsAndOutputs=True), timeout=20))
    item = await worker.next()
    await worker.complete(item, rewrite(item.orchestratorRequest, uuid.uuid4().hex))
    assert not waiter.done()  # running again: not the old failure
    item = await worker.next()
    await worker.complete(item, pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=text('"second time"'))))
    reply = await asyncio.wait_for(waiter, 10)
    assert reply.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    assert reply.orchestrationState.output.value == '"second time"'


# -- the worker's rewind ---------------------------------------------------------------------------


async def test_the_worker_rewind_replaces_the_history_and_the_execution(stub, app, redis, worker):
    await failed_instance(stub, worker, "rp")
    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="rp", reason=text("again")))
    item = await worker.next()
    action = rewrite(item.orchestratorRequest, "e2")
    await worker.complete(item, action)

    after = await state(stub, "rp")
    assert (after.orchestrationStatus, after.executionId.value) == (pb.ORCHESTRATION_STATUS_RUNNING, "e2")
    assert after.input.value == '"in"'  # `start` points into the new history
    assert await history(stub, "rp") == list(action.rewindOrchestration.newHistory)
    assert kinds(action.rewindOrchestration.newHistory) == ["orchestratorStarted", "executionStarted",
                                                             "orchestratorStarted", "executionRewound"]
    pk = keys_of(app, "rp")
    h = await redis.hgetall(pk.instance("rp"))
    assert b"rewinding" not in h
    assert int(h[b"size"]) == sum(len(e.SerializeToString()) for e in action.rewindOrchestration.newHistory)

    replay = (await worker.next()).orchestratorRequest  # handed out again to replay the new history
    assert list(replay.pastEvents) == list(action.rewindOrchestration.newHistory)
    assert kinds(replay.newEvents) == ["orchestratorStarted"] and replay.executionId.value == "e2"


async def test_a_rewind_under_a_stale_claim_is_refused_and_changes_nothing(stub, redis, key_prefix, worker):
    await failed_instance(stub, worker, "stale")
    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="stale"))
    first = await worker.next()
    await stub.AbandonTaskOrchestratorWorkItem(pb.AbandonOrchestrationTaskRequest(
        completionToken=first.completionToken))
    second = await worker.next()  # handed out again, under a new claim and again with the rewind event alone
    assert second.completionToken != first.completionToken
    assert kinds(second.orchestratorRequest.newEvents) == ["orchestratorStarted", "executionRewound"]
    before = await unleased_snapshot(redis, key_prefix)
    message = await rpc_error(stub.CompleteOrchestratorTask(pb.OrchestratorResponse(
        instanceId="stale", actions=[rewrite(first.orchestratorRequest, "late")], completionToken=first.completionToken)),
        grpc.StatusCode.FAILED_PRECONDITION)
    assert "stale" in message and "lease" in message
    assert await unleased_snapshot(redis, key_prefix) == before
    await worker.complete(second, rewrite(second.orchestratorRequest, "current"))
    assert (await state(stub, "stale")).executionId.value == "current"


async def test_events_that_come_during_the_rewind_wait_for_the_replay(stub, worker):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="ev", name="Orch"))
    item = await worker.next()
    await stub.RaiseEvent(pb.RaiseEventRequest(instanceId="ev", name="Early", input=text("1")))  # during it
    await worker.complete(item, failing())
    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="ev"))
    await stub.RaiseEvent(pb.RaiseEventRequest(instanceId="ev", name="Late", input=text("2")))

    item = await worker.next()
    req = item.orchestratorRequest
    assert kinds(req.newEvents) == ["orchestratorStarted", "executionRewound"]  # what the SDK's rewind takes
    assert kinds(req.pastEvents)[-2:] == ["executionCompleted", "eventRaised"]  # left when it failed: history
    assert req.pastEvents[-1].eventRaised.name == "Early"
    action = rewrite(req, "e2")
    assert [e.eventRaised.name for e in action.rewindOrchestration.newHistory if e.HasField("eventRaised")] == \
        ["Early"]
    await worker.complete(item, action)
    replay = (await worker.next()).orchestratorRequest
    assert kinds(replay.newEvents) == ["orchestratorStarted", "eventRaised"]
    assert replay.newEvents[1].eventRaised.name == "Late"


async def test_work_under_way_when_it_failed_is_set_going_again(stub, worker):
    """An activity and a timer that the failed execution still waited for: the new history waits for them
    too, and nothing else would deliver them (results of the old execution are dropped)."""
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="ow", name="Orch"))
    item = await worker.next()
    fire_at = timestamp_pb2.Timestamp()
    fire_at.FromMilliseconds(int(time.time() * 1000) + 3000)
    await worker.complete(item, *(pb.OrchestratorAction(id=t, scheduleTask=pb.ScheduleTaskAction(name=name))
                                  for t, name in ((1, "Slow"), (2, "Bad"))),
                          pb.OrchestratorAction(id=3, createTimer=pb.CreateTimerAction(fireAt=fire_at)))
    old = {}
    for _ in range(2):
        work = await worker.next("activityRequest")
        old[work.activityRequest.name] = work
    await stub.CompleteActivityTask(pb.ActivityResponse(
        instanceId="ow", taskId=2, completionToken=old["Bad"].completionToken,
        failureDetails=pb.TaskFailureDetails(errorType="Bad", errorMessage="bad")))
    item = await worker.next()
    assert kinds(item.orchestratorRequest.newEvents) == ["orchestratorStarted", "taskFailed"]
    await worker.complete(item, failing())

    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="ow"))
    item = await worker.next()
    await worker.complete(item, rewrite(item.orchestratorRequest, "e2"))
    replay = await worker.next()
    assert "taskFailed" not in kinds(replay.orchestratorRequest.pastEvents)
    await worker.complete(replay, pb.OrchestratorAction(id=2, scheduleTask=pb.ScheduleTaskAction(name="Bad")))
    new = {}
    for _ in range(2):  # "Slow" again, with "Bad" that the replay scheduled again: both for the new execution
        work = await worker.next("activityRequest")
        new[work.activityRequest.name] = work
    assert {name: (w.activityRequest.taskId, w.activityRequest.orchestrationInstance.executionId.value)
            for name, w in new.items()} == {"Slow": (1, "e2"), "Bad": (2, "e2")}
    await stub.CompleteActivityTask(pb.ActivityResponse(  # the old execution's result is dropped
        instanceId="ow", taskId=1, completionToken=old["Slow"].completionToken, result=text('"old"')))
    await stub.CompleteActivityTask(pb.ActivityResponse(
        instanceId="ow", taskId=1, completionToken=new["Slow"].completionToken, result=text('"new"')))
    delivered: list[pb.HistoryEvent] = []
    while len(delivered) < 2:  # the result, and the timer at its time (in one episode or two)
        item = await worker.next(timeout=10)
        delivered += [e for e in item.orchestratorRequest.newEvents if not e.HasField("orchestratorStarted")]
        await worker.complete(item)
    assert kinds(delivered) == ["taskCompleted", "timerFired"]
    assert delivered[0].taskCompleted.result.value == '"new"'
    assert delivered[1].timerFired.timerId == 3
    assert time.time() * 1000 >= fire_at.ToMilliseconds()


async def test_a_rewind_action_outside_a_rewind_fails_the_orchestration(stub, worker):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="odd", name="Orch"))
    item = await worker.next()
    await worker.complete(item, pb.OrchestratorAction(id=-1, rewindOrchestration=pb.RewindOrchestrationAction(
        newHistory=list(item.orchestratorRequest.newEvents))))
    failed = await state(stub, "odd")
    assert failed.orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
    assert "not being rewound" in failed.failureDetails.errorMessage


async def test_a_rewound_history_of_another_instance_fails_the_orchestration(stub, worker):
    await failed_instance(stub, worker, "mine")
    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="mine"))
    item = await worker.next()
    action = rewrite(item.orchestratorRequest, "e2")
    for e in action.rewindOrchestration.newHistory:
        if e.HasField("executionStarted"):
            e.executionStarted.orchestrationInstance.instanceId = "yours"
    await worker.complete(item, action)
    failed = await state(stub, "mine")
    assert failed.orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
    assert failed.failureDetails.errorType == "InvalidArgument" and "'yours'" in failed.failureDetails.errorMessage


async def test_a_rewound_history_past_the_limit_fails_the_orchestration_clearly(start_app, redis_url, key_prefix,
                                                                               hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=4,
                          max_history_events=10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        worker = Worker(stub)
        await failed_instance(stub, worker, "long")
        await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="long"))
        item = await worker.next()
        action = rewrite(item.orchestratorRequest, "e2")
        padding = pb.HistoryEvent(eventId=-1, orchestratorStarted=pb.OrchestratorStartedEvent())
        action.rewindOrchestration.newHistory.extend([padding] * 7)  # 11 events
        await worker.complete(item, action)
        failed = await state(stub, "long")
        assert failed.orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
        assert failed.failureDetails.errorType == "HistoryLimitExceeded"
        assert failed.executionId.value != "e2"  # nothing of the rewind was written
        assert kinds(await history(stub, "long"))[-3:] == ["orchestratorStarted", "executionRewound",
                                                           "executionCompleted"]
        worker.call.cancel()


async def test_a_child_that_fails_again_in_its_rewind_tells_its_parent_again(stub, worker):
    """Its execution id is the same as at its first failure: the second message must not be taken for the
    first (the parent de-duplicates messages by id)."""
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="parent", name="Parent"))
    item = await worker.next(of="parent")
    await worker.complete(item, pb.OrchestratorAction(id=1, createSubOrchestration=pb.CreateSubOrchestrationAction(
        instanceId="kid", name="Kid")))
    await worker.complete(await worker.next(of="kid"), failing("first"))
    item = await worker.next(of="parent")
    assert kinds(item.orchestratorRequest.newEvents) == ["orchestratorStarted", "subOrchestrationInstanceFailed"]
    await worker.complete(item)  # the parent goes on (it handles the failure)

    await stub.RewindInstance(pb.RewindInstanceRequest(instanceId="kid"))
    await worker.complete(await worker.next(of="kid"), failing("second"))  # a worker that cannot rewind
    item = await worker.next(of="parent")
    assert kinds(item.orchestratorRequest.newEvents) == ["orchestratorStarted", "subOrchestrationInstanceFailed"]
    assert item.orchestratorRequest.newEvents[1].subOrchestrationInstanceFailed.failureDetails.errorMessage == "second"
    assert (await state(stub, "kid")).orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
