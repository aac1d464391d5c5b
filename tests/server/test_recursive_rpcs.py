"""Recursive terminate and purge follow sub-orchestrations, over a real port with a scripted worker.

The worker here answers each episode as the SDK would for a tiny program: a parent
that creates children, children that wait (or end at once), and an ExecutionTerminated
event answered with a TERMINATED completion.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import PARTITIONS, eventually

Plan = Callable[[pb.OrchestratorRequest], list[pb.OrchestratorAction]]


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                           health_ping_seconds=0.2, lease_seconds=2.0)


def create_children(*ids: str) -> Plan:
    """First episode: create the children (task ids 1, 2, ...); later episodes: nothing (keep waiting)."""
    def plan(req: pb.OrchestratorRequest) -> list[pb.OrchestratorAction]:
        if req.pastEvents:
            return []
        return [pb.OrchestratorAction(id=i, createSubOrchestration=pb.CreateSubOrchestrationAction(
            instanceId=child, name="Child")) for i, child in enumerate(ids, 1)]
    return plan


def wait_forever(req: pb.OrchestratorRequest) -> list[pb.OrchestratorAction]:
    return []


def complete_at_once(req: pb.OrchestratorRequest) -> list[pb.OrchestratorAction]:
    return [ending(pb.ORCHESTRATION_STATUS_COMPLETED, '"done"')]


def ending(status: int, output: str | None = None) -> pb.OrchestratorAction:
    done = pb.CompleteOrchestrationAction(orchestrationStatus=status)
    if output is not None:
        done.result.CopyFrom(wrappers_pb2.StringValue(value=output))
    return pb.OrchestratorAction(id=99, completeOrchestration=done)


@contextlib.asynccontextmanager
async def scripted_worker(stub, plans: dict[str, Plan], only: str | None = None):
    """Answer every orchestration episode from ``plans`` (by instance id) until the block ends; with
    ``only``, ask for the orchestrations of that name only (a work-item filter)."""
    request = pb.GetWorkItemsRequest()
    if only is not None:
        request.workItemFilters.orchestrations.add(name=only)
    call = stub.GetWorkItems(request)

    async def run() -> None:
        async for item in call:
            if not item.HasField("orchestratorRequest"):
                continue
            req = item.orchestratorRequest
            terminated = next((e.executionTerminated for e in req.newEvents if e.HasField("executionTerminated")),
                              None)
            if terminated is not None:
                actions = [ending(pb.ORCHESTRATION_STATUS_TERMINATED, terminated.input.value or None)]
            else:
                actions = plans[req.instanceId](req)
            await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(
                instanceId=req.instanceId, actions=actions, completionToken=item.completionToken))

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task


async def status(stub, iid: str) -> str:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid))
    if not reply.exists:
        return "GONE"
    return pb.OrchestrationStatus.Name(reply.orchestrationState.orchestrationStatus).removeprefix(
        "ORCHESTRATION_STATUS_")


async def nothing_in_flight(app) -> bool:
    """No outbox message, ready instance or lease in any partition of the hub."""
    hub = app.store.cached_hub(app.config.task_hub)
    async with app.store.redis.pipeline(transaction=False) as pipe:
        for p in range(hub.partitions):
            pk = hub.partition(p)
            pipe.llen(pk.outbox).zcard(pk.ready).zcard(pk.leases)
        return not any(await pipe.execute())


async def until(stub, expected: dict[str, str], timeout: float = 10.0) -> None:
    async def reached() -> bool:
        return {iid: await status(stub, iid) for iid in expected} == expected
    await eventually(reached, timeout=timeout)


FAMILY = {"mum": create_children("kid1", "kid2"), "kid1": create_children("grandkid"),
          "kid2": complete_at_once, "grandkid": wait_forever}


@pytest.mark.parametrize("recursive", [True, False])
async def test_terminating_a_parent_reaches_its_running_descendants_only_when_recursive(stub, app, recursive):
    async with scripted_worker(stub, FAMILY):
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="mum", name="Parent"))
        await until(stub, {"mum": "RUNNING", "kid1": "RUNNING", "kid2": "COMPLETED", "grandkid": "RUNNING"})
        await stub.TerminateInstance(pb.TerminateRequest(instanceId="mum", recursive=recursive,
                                                         output=wrappers_pb2.StringValue(value='"stop"')))
        if recursive:
            await until(stub, {"mum": "TERMINATED", "kid1": "TERMINATED", "grandkid": "TERMINATED"})
        else:
            await until(stub, {"mum": "TERMINATED"})
            await eventually(lambda: nothing_in_flight(app))  # a wrongly relayed termination would have landed
            assert (await status(stub, "kid1"), await status(stub, "grandkid")) == ("RUNNING", "RUNNING")
        assert await status(stub, "kid2") == "COMPLETED"  # it had ended: left as it was
    if recursive:
        reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId="grandkid", getInputsAndOutputs=True))
        assert reply.orchestrationState.output.value == '"stop"'  # the reason travels down


async def test_a_recursive_termination_ends_a_child_that_never_ran_at_once(stub):
    async with scripted_worker(stub, {"mum": create_children("kid1")}, only="Parent"):  # nobody runs "Child"
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="mum", name="Parent"))
        await until(stub, {"mum": "RUNNING", "kid1": "PENDING"})
        await stub.TerminateInstance(pb.TerminateRequest(instanceId="mum", recursive=True))
        await until(stub, {"mum": "TERMINATED", "kid1": "TERMINATED"})


async def run_family_to_completion(stub) -> None:
    plans = {"mum": create_children("kid1", "kid2"), "kid1": create_children("grandkid"),
             "kid2": complete_at_once, "grandkid": complete_at_once}

    def parent_completes_when_children_did(inner: Plan) -> Plan:
        def plan(req: pb.OrchestratorRequest) -> list[pb.OrchestratorAction]:
            events = [*req.pastEvents, *req.newEvents]
            created = sum(e.HasField("subOrchestrationInstanceCreated") for e in events)
            ended = sum(e.HasField("subOrchestrationInstanceCompleted") for e in events)
            return [ending(pb.ORCHESTRATION_STATUS_COMPLETED)] if created and ended == created else inner(req)
        return plan

    plans["mum"] = parent_completes_when_children_did(plans["mum"])
    plans["kid1"] = parent_completes_when_children_did(plans["kid1"])
    async with scripted_worker(stub, plans):
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="mum", name="Parent"))
        await until(stub, dict.fromkeys(("mum", "kid1", "kid2", "grandkid"), "COMPLETED"))


async def test_a_recursive_purge_deletes_the_whole_tree(stub):
    await run_family_to_completion(stub)
    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="mum", recursive=True))
    assert reply.deletedInstanceCount == 4
    assert [await status(stub, i) for i in ("mum", "kid1", "kid2", "grandkid")] == ["GONE"] * 4


async def test_a_purge_without_recursive_leaves_the_children(stub):
    await run_family_to_completion(stub)
    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="mum"))
    assert reply.deletedInstanceCount == 1
    assert [await status(stub, i) for i in ("mum", "kid1", "kid2", "grandkid")] == \
        ["GONE", "COMPLETED", "COMPLETED", "COMPLETED"]


async def test_a_recursive_purge_by_filter_counts_each_instance_once(stub):
    await run_family_to_completion(stub)  # all four match the filter, and three are also someone's child
    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(
        purgeInstanceFilter=pb.PurgeInstanceFilter(runtimeStatus=[pb.ORCHESTRATION_STATUS_COMPLETED]),
        recursive=True))
    assert reply.deletedInstanceCount == 4 and reply.isComplete.value


async def test_a_recursive_purge_of_a_running_parent_deletes_nothing(stub):
    async with scripted_worker(stub, {"mum": create_children("kid2"), "kid2": complete_at_once}):
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="mum", name="Parent"))
        await until(stub, {"mum": "RUNNING", "kid2": "COMPLETED"})
        reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="mum", recursive=True))
    assert reply.deletedInstanceCount == 0
    assert (await status(stub, "mum"), await status(stub, "kid2")) == ("RUNNING", "COMPLETED")


async def test_a_child_terminated_before_any_worker_ran_it_tells_its_parent(stub):
    def parent(req: pb.OrchestratorRequest) -> list[pb.OrchestratorAction]:
        failed = [e.subOrchestrationInstanceFailed for e in req.newEvents if e.HasField("subOrchestrationInstanceFailed")]
        if failed:
            return [ending(pb.ORCHESTRATION_STATUS_COMPLETED, f'"{failed[0].failureDetails.errorType}"')]
        return create_children("kid1")(req)

    async with scripted_worker(stub, {"mum": parent}, only="Parent"):  # nobody runs "Child"
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="mum", name="Parent"))
        await until(stub, {"mum": "RUNNING", "kid1": "PENDING"})
        await stub.TerminateInstance(pb.TerminateRequest(instanceId="kid1"))  # ends at once: no episode
        await until(stub, {"kid1": "TERMINATED", "mum": "COMPLETED"})
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId="mum", getInputsAndOutputs=True))
    assert reply.orchestrationState.output.value == '"Terminated"'
