"""Entity RPCs over a real port, without an SDK: signals and their bounds, batches handed out as
entityRequestV2 work items and completed or abandoned under their claim, results and failures for
callers, state reads and queries, clean-up; SkipGracefulOrchestrationTerminations."""
from __future__ import annotations


import grpc
import pytest
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.protocol import ENTITY, claim_token
from scheduler.store.keys import partition_of
from server_helpers import MAX_PAYLOAD, PARTITIONS, next_work, prefix_keys, rpc_error


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                           health_ping_seconds=0.2, lease_seconds=1.0, max_payload_bytes=MAX_PAYLOAD,
                           max_inbox_events=3)


def text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def ok(value: str | None) -> pb.OperationResult:
    return pb.OperationResult(success=pb.OperationResultSuccess(result=None if value is None else text(value)))


async def test_a_signal_becomes_a_batch_and_its_completion_sets_the_state(stub):
    for i in range(2):
        await stub.SignalEntity(pb.SignalEntityRequest(instanceId="@counter@a", name="add", input=text(str(i)),
                                                       requestId=f"r{i}"))
    await stub.SignalEntity(pb.SignalEntityRequest(instanceId="@counter@a", name="add", input=text("0"),
                                                   requestId="r0"))  # the same request again: once
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    item = await next_work(call)
    request = item.entityRequestV2
    assert request.instanceId == "@counter@a" and not request.HasField("entityState")
    ops = [e.entityOperationSignaled for e in request.operationRequests]
    assert [(o.operation, o.input.value, o.requestId) for o in ops] == [("add", "0", "r0"), ("add", "1", "r1")]
    await stub.CompleteEntityTask(pb.EntityBatchResult(completionToken=item.completionToken,
                                                       results=[ok(None), ok(None)], entityState=text("1")))
    reply = await stub.GetEntity(pb.GetEntityRequest(instanceId="@counter@a", includeState=True))
    assert reply.exists and reply.entity.serializedState.value == "1" and reply.entity.backlogQueueSize == 0
    reply = await stub.GetEntity(pb.GetEntityRequest(instanceId="@counter@a", includeState=False))
    assert reply.exists and not reply.entity.HasField("serializedState")
    await rpc_error(stub.CompleteEntityTask(pb.EntityBatchResult(completionToken=item.completionToken,
                                                                 results=[ok(None)])),
                    grpc.StatusCode.FAILED_PRECONDITION)  # applied once
    call.cancel()


async def test_an_abandoned_batch_is_handed_out_again_with_the_same_operations(stub):
    await stub.SignalEntity(pb.SignalEntityRequest(instanceId="@counter@b", name="add", requestId="x"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    first = await next_work(call)
    await stub.AbandonTaskEntityWorkItem(pb.AbandonEntityTaskRequest(completionToken=first.completionToken))
    again = await next_work(call)
    assert again.completionToken != first.completionToken
    assert again.entityRequestV2.operationRequests == first.entityRequestV2.operationRequests
    call.cancel()


async def test_bad_signals_get_a_clear_status_and_write_nothing(stub, redis, key_prefix):
    cases = [(pb.SignalEntityRequest(instanceId="counter", name="add"), grpc.StatusCode.INVALID_ARGUMENT),
             (pb.SignalEntityRequest(instanceId="@@k", name="add"), grpc.StatusCode.INVALID_ARGUMENT),
             (pb.SignalEntityRequest(instanceId="@c@k", name=""), grpc.StatusCode.INVALID_ARGUMENT),
             (pb.SignalEntityRequest(instanceId="@c@k\n", name="add"), grpc.StatusCode.INVALID_ARGUMENT),
             (pb.SignalEntityRequest(instanceId="@c@k", name="add", requestId="a\x00"),
              grpc.StatusCode.INVALID_ARGUMENT),
             (pb.SignalEntityRequest(instanceId="@c@k", name="add", input=text("x" * (MAX_PAYLOAD + 1))),
              grpc.StatusCode.RESOURCE_EXHAUSTED)]
    before = await prefix_keys(redis, key_prefix)
    for request, code in cases:
        await rpc_error(stub.SignalEntity(request), code)
    assert await prefix_keys(redis, key_prefix) == before
    await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="@c@k", name="Orch")),
                    grpc.StatusCode.INVALID_ARGUMENT)
    await rpc_error(stub.GetEntity(pb.GetEntityRequest(instanceId="nope")), grpc.StatusCode.INVALID_ARGUMENT)
    assert not (await stub.GetEntity(pb.GetEntityRequest(instanceId="@c@never"))).exists


async def test_an_entity_past_its_queue_bound_refuses_more_signals(stub):
    for i in range(3):
        await stub.SignalEntity(pb.SignalEntityRequest(instanceId="@c@full", name="add", requestId=f"r{i}"))
    message = await rpc_error(stub.SignalEntity(pb.SignalEntityRequest(instanceId="@c@full", name="add")),
                              grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "@c@full" in message


async def test_a_call_from_an_orchestration_gets_its_result_and_a_failure_its_failure(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="caller", name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    episode = await next_work(call)
    calls = [pb.OrchestratorAction(id=i + 1, sendEntityMessage=pb.SendEntityMessageAction(
        entityOperationCalled=pb.EntityOperationCalledEvent(requestId=f"q{i}", operation=op,
                                                            targetInstanceId=text("@c@callee"))))
        for i, op in enumerate(["get", "boom"])]
    await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(instanceId="caller", actions=calls,
                                                                completionToken=episode.completionToken))
    failure = pb.OperationResult(failure=pb.OperationResultFailure(
        failureDetails=pb.TaskFailureDetails(errorType="ValueError", errorMessage="boom")))
    answers = {"q0": ok("42"), "q1": failure}
    called, new = [], []
    while len(new) < 2:  # the calls may come in one batch or two, their answers in one episode or two
        item = await next_work(call)
        if item.HasField("entityRequestV2"):
            batch = [e.entityOperationCalled for e in item.entityRequestV2.operationRequests]
            called += [(c.requestId, c.parentInstanceId.value) for c in batch]
            await stub.CompleteEntityTask(pb.EntityBatchResult(completionToken=item.completionToken,
                                                               results=[answers[c.requestId] for c in batch],
                                                               entityState=text("0")))
        else:
            episode = item
            new += [e for e in item.orchestratorRequest.newEvents if not e.HasField("orchestratorStarted")]
            await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(instanceId="caller",
                                                                        completionToken=item.completionToken))
    assert called == [("q0", "caller"), ("q1", "caller")]
    assert [e.WhichOneof("eventType") for e in new] == ["entityOperationCompleted", "entityOperationFailed"]
    assert new[0].entityOperationCompleted.requestId == "q0" and new[0].entityOperationCompleted.output.value == "42"
    assert new[1].entityOperationFailed.failureDetails.errorMessage == "boom"
    past = [e.WhichOneof("eventType") for e in episode.orchestratorRequest.pastEvents]
    assert past.count("entityOperationCalled") == 2  # the calls are in the orchestration's history
    call.cancel()


async def test_a_batch_with_fewer_results_leaves_the_rest_for_the_next_batch(stub):
    for i in range(3):
        await stub.SignalEntity(pb.SignalEntityRequest(instanceId="@c@part", name="op", requestId=f"p{i}"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    batch = await next_work(call)
    assert len(batch.entityRequestV2.operationRequests) == 3
    await stub.CompleteEntityTask(pb.EntityBatchResult(completionToken=batch.completionToken, results=[ok(None)],
                                                       entityState=text("1")))
    batch = await next_work(call)
    assert [e.entityOperationSignaled.requestId for e in batch.entityRequestV2.operationRequests] == ["p1", "p2"]
    assert batch.entityRequestV2.entityState.value == "1"
    call.cancel()


async def test_query_and_clean_entity_storage(stub):
    for key in ("a", "b", "c"):
        await stub.SignalEntity(pb.SignalEntityRequest(instanceId=f"@q@{key}", name="op", requestId=key))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest())
    for _ in range(3):
        batch = await next_work(call)
        state = None if batch.entityRequestV2.instanceId == "@q@b" else text('"s"')
        await stub.CompleteEntityTask(pb.EntityBatchResult(completionToken=batch.completionToken,
                                                           results=[ok(None)], entityState=state))
    seen, token = [], None
    while True:
        query = pb.EntityQuery(instanceIdStartsWith=text("q"), includeState=True, pageSize=wrappers_pb2.Int32Value(value=2))
        if token:
            query.continuationToken.CopyFrom(text(token))
        reply = await stub.QueryEntities(pb.QueryEntitiesRequest(query=query))
        seen += [(e.instanceId, e.serializedState.value) for e in reply.entities]
        if not reply.HasField("continuationToken"):
            break
        token = reply.continuationToken.value
    assert seen == [("@q@a", '"s"'), ("@q@b", ""), ("@q@c", '"s"')]
    reply = await stub.CleanEntityStorage(pb.CleanEntityStorageRequest(removeEmptyEntities=True,
                                                                       releaseOrphanedLocks=True))
    assert (reply.emptyEntitiesRemoved, reply.orphanedLocksReleased) == (1, 0)
    assert not (await stub.GetEntity(pb.GetEntityRequest(instanceId="@q@b"))).exists
    call.cancel()


async def test_skip_graceful_terminations_end_running_instances_at_once(stub):
    for iid in ("g1", "g2"):
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=1))
    held = await next_work(call)  # one of them is running on this worker
    reply = await stub.SkipGracefulOrchestrationTerminations(pb.SkipGracefulOrchestrationTerminationsRequest(
        instanceBatch=pb.InstanceBatch(instanceIds=["g1", "g2", "unknown"]), reason=text('"stop"')))
    assert list(reply.unterminatedInstanceIds) == ["unknown"]
    for iid in ("g1", "g2"):
        state = (await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid, getInputsAndOutputs=True))).orchestrationState
        assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_TERMINATED and state.output.value == '"stop"'
    done = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED))
    await rpc_error(stub.CompleteOrchestratorTask(pb.OrchestratorResponse(
        instanceId=held.orchestratorRequest.instanceId, actions=[done], completionToken=held.completionToken)),
        grpc.StatusCode.FAILED_PRECONDITION)
    reply = await stub.SkipGracefulOrchestrationTerminations(pb.SkipGracefulOrchestrationTerminationsRequest(
        instanceBatch=pb.InstanceBatch(instanceIds=["g1"])))
    assert list(reply.unterminatedInstanceIds) == ["g1"]  # already ended
    call.cancel()


async def test_a_batch_too_large_for_one_message_fails_its_operations_instead_of_going_out(app, stub, redis):
    """The entity work kind hands a batch it cannot send to the rules (Entities.fail_batch, wired by the
    engine): the operation is done with (failed), its lease gone, the entity free for what comes next."""
    entity = "@counter@big"
    await stub.SignalEntity(pb.SignalEntityRequest(instanceId=entity, name="add", requestId="r1"))
    hub = app.store.cached_hub(app.config.task_hub)
    kind = app.engine.dispatcher.kinds[ENTITY]
    kind.max_message_bytes = 10  # any batch is too large now
    token = claim_token(hub.hub, partition_of(entity, hub.partitions), ENTITY, entity)
    assert await kind.claim(hub, entity, token, 60_000) is None
    pk = hub.for_instance(entity)
    assert await redis.llen(pk.entity(entity).ops) == 0
    assert await redis.zscore(pk.leases, f"{ENTITY}|{entity}") is None
