"""RestartInstance and WaitForInstanceCompletion over a real port."""
from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import rpc_error


def start(iid: str, **fields) -> pb.CreateInstanceRequest:
    return pb.CreateInstanceRequest(instanceId=iid, name="Orch", input=wrappers_pb2.StringValue(value='{"n": 1}'),
                                    version=wrappers_pb2.StringValue(value="v3"), **fields)


async def state(stub, iid: str) -> pb.OrchestrationState:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid, getInputsAndOutputs=True))
    assert reply.exists
    return reply.orchestrationState


async def test_restart_with_the_same_id_starts_a_fresh_execution(stub):
    await stub.StartInstance(start("r"))
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="r"))
    before = await state(stub, "r")
    reply = await stub.RestartInstance(pb.RestartInstanceRequest(instanceId="r"))
    assert reply.instanceId == "r"
    after = await state(stub, "r")
    assert after.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
    assert (after.name, after.input.value, after.version.value) == ("Orch", '{"n": 1}', "v3")
    assert after.executionId.value != before.executionId.value
    assert not after.HasField("completedTimestamp")


async def test_restart_with_a_new_id_keeps_the_old_instance(stub):
    await stub.StartInstance(start("old"))
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="old"))
    reply = await stub.RestartInstance(pb.RestartInstanceRequest(instanceId="old", restartWithNewInstanceId=True))
    assert reply.instanceId != "old" and len(reply.instanceId) == 32
    fresh = await state(stub, reply.instanceId)
    assert fresh.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING and fresh.input.value == '{"n": 1}'
    assert (await state(stub, "old")).orchestrationStatus == pb.ORCHESTRATION_STATUS_TERMINATED


async def test_restart_of_a_running_or_unknown_instance_is_refused(stub):
    await stub.StartInstance(start("busy"))
    message = await rpc_error(stub.RestartInstance(pb.RestartInstanceRequest(instanceId="busy")),
                              grpc.StatusCode.FAILED_PRECONDITION)
    assert "busy" in message and "PENDING" in message
    assert (await state(stub, "busy")).orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
    await rpc_error(stub.RestartInstance(pb.RestartInstanceRequest(instanceId="nobody")), grpc.StatusCode.NOT_FOUND)


async def test_wait_for_completion_returns_when_the_instance_ends(stub, app):
    await stub.StartInstance(start("w"))
    await asyncio.wait_for(app.engine.wakeups.connected.wait(), 5)
    waiter = asyncio.ensure_future(stub.WaitForInstanceCompletion(
        pb.GetInstanceRequest(instanceId="w", getInputsAndOutputs=True), timeout=10))
    await asyncio.sleep(0)
    assert not waiter.done()
    started = time.monotonic()
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="w", output=wrappers_pb2.StringValue(value='"bye"')))
    reply = await waiter
    assert time.monotonic() - started < 2  # woken by the status announcement, not the 5 s re-check
    assert reply.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_TERMINATED
    assert reply.orchestrationState.output.value == '"bye"'


async def test_wait_for_completion_times_out_while_pending(stub):
    await stub.StartInstance(start("p"))
    message = await rpc_error(stub.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="p"), timeout=0.5),
                              grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "complete" in message
