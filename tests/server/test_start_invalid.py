"""StartInstance rejects bad input with a clear status and message, and writes nothing."""
from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import MAX_PAYLOAD, bookkeeping_keys, rpc_error, snapshot


def request(**kwargs) -> pb.CreateInstanceRequest:
    kwargs.setdefault("instanceId", "bad-1")
    kwargs.setdefault("name", "Orch")
    return pb.CreateInstanceRequest(**kwargs)


def with_unknown_reuse_status() -> pb.CreateInstanceRequest:
    req = request()
    req.orchestrationIdReusePolicy.replaceableStatus.extend([pb.ORCHESTRATION_STATUS_COMPLETED, 99])
    return req


CASES = {
    "empty name": (request(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
    "blank name": (request(name="  "), grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
    "id of 257 characters": (request(instanceId="i" * 257), grpc.StatusCode.INVALID_ARGUMENT,
                             "instanceId is 257 characters long; the limit is 256"),
    "control character in id": (request(instanceId="bad\x01id"), grpc.StatusCode.INVALID_ARGUMENT,
                                "instanceId 'bad\\x01id' contains control characters"),
    "control character in executionId": (request(executionId=wrappers_pb2.StringValue(value="e\nx")),
                                         grpc.StatusCode.INVALID_ARGUMENT, "executionId"),
    "scheduled seconds out of range": (
        request(scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=253402300800)),
        grpc.StatusCode.INVALID_ARGUMENT, "scheduledStartTimestamp has seconds=253402300800, outside the valid range"),
    "scheduled seconds before year 1": (
        request(scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=-62135596801)),
        grpc.StatusCode.INVALID_ARGUMENT, "scheduledStartTimestamp has seconds=-62135596801"),
    "scheduled nanos out of range": (
        request(scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=int(time.time()), nanos=1_000_000_000)),
        grpc.StatusCode.INVALID_ARGUMENT, "nanos must be between 0 and 999999999"),
    "negative nanos": (
        request(scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=int(time.time()), nanos=-1)),
        grpc.StatusCode.INVALID_ARGUMENT, "scheduledStartTimestamp has nanos=-1"),
    "bad requestTime": (request(requestTime=timestamp_pb2.Timestamp(seconds=1, nanos=-5)),
                        grpc.StatusCode.INVALID_ARGUMENT, "requestTime has nanos=-5"),
    "input over the limit": (request(input=wrappers_pb2.StringValue(value="x" * (MAX_PAYLOAD + 1))),
                             grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"input is {MAX_PAYLOAD + 1} bytes; the configured limit is {MAX_PAYLOAD} bytes"),
    "unknown replaceable status": (with_unknown_reuse_status(), grpc.StatusCode.INVALID_ARGUMENT,
                                   "replaceableStatus holds unknown status 99"),
}


@pytest.mark.parametrize("case", CASES)
async def test_bad_request_is_rejected_and_writes_nothing(case, stub, redis, key_prefix, hub_name):
    req, code, fragment = CASES[case]
    before = await snapshot(redis, key_prefix)
    assert set(before) <= bookkeeping_keys(key_prefix, hub_name)
    message = await rpc_error(stub.StartInstance(req), code)
    assert fragment in message
    assert await snapshot(redis, key_prefix) == before
    assert not (await stub.GetInstance(pb.GetInstanceRequest(instanceId=req.instanceId))).exists


async def test_input_at_the_limit_is_accepted(stub):
    req = request(instanceId="at-limit", input=wrappers_pb2.StringValue(value="é" * (MAX_PAYLOAD // 2)))
    await stub.StartInstance(req)
    got = await stub.GetInstance(pb.GetInstanceRequest(instanceId="at-limit", getInputsAndOutputs=True))
    assert got.orchestrationState.input.value == "é" * (MAX_PAYLOAD // 2)


async def test_id_of_256_characters_is_accepted(stub):
    iid = "i" * 256
    assert (await stub.StartInstance(request(instanceId=iid))).instanceId == iid
    assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid))).exists


async def test_duplicate_id_is_already_exists_and_first_is_unchanged(stub, redis, key_prefix):
    first = request(instanceId="dup", input=wrappers_pb2.StringValue(value='"first"'),
                    scheduledStartTimestamp=timestamp_pb2.Timestamp(seconds=int(time.time()) + 600))
    await stub.StartInstance(first)
    before = await snapshot(redis, key_prefix)
    second = request(instanceId="dup", name="Other", input=wrappers_pb2.StringValue(value='"second"'))
    message = await rpc_error(stub.StartInstance(second), grpc.StatusCode.ALREADY_EXISTS)
    assert message == "orchestration instance 'dup' already exists with status PENDING"
    assert await snapshot(redis, key_prefix) == before
    got = await stub.GetInstance(pb.GetInstanceRequest(instanceId="dup", getInputsAndOutputs=True))
    assert (got.orchestrationState.name, got.orchestrationState.input.value) == ("Orch", '"first"')


async def test_reuse_policy_with_pending_replaces(stub, app, hub_name):
    scheduled = timestamp_pb2.Timestamp(seconds=int(time.time()) + 600)
    await stub.StartInstance(request(instanceId="reuse", input=wrappers_pb2.StringValue(value='"old"'),
                                     scheduledStartTimestamp=scheduled))
    old = (await stub.GetInstance(pb.GetInstanceRequest(instanceId="reuse"))).orchestrationState
    replace = request(instanceId="reuse", name="NewName", input=wrappers_pb2.StringValue(value='"new"'))
    replace.orchestrationIdReusePolicy.replaceableStatus.extend(
        [pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_PENDING])
    assert (await stub.StartInstance(replace)).instanceId == "reuse"
    new = (await stub.GetInstance(pb.GetInstanceRequest(instanceId="reuse", getInputsAndOutputs=True)))
    s = new.orchestrationState
    assert (s.name, s.input.value) == ("NewName", '"new"')
    assert not s.HasField("scheduledStartTimestamp")
    assert s.executionId.value != old.executionId.value
    hub = await app.store.ensure_hub(hub_name)
    stats = await app.store.hub_stats(hub)
    assert (stats.statuses, stats.due, stats.ready) == ({"PENDING": 1}, 0, 1)  # old due entry gone


async def test_reuse_policy_without_pending_does_not_replace(stub):
    await stub.StartInstance(request(instanceId="keep"))
    again = request(instanceId="keep", name="Other")
    again.orchestrationIdReusePolicy.replaceableStatus.extend(
        [pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED, pb.ORCHESTRATION_STATUS_TERMINATED])
    await rpc_error(stub.StartInstance(again), grpc.StatusCode.ALREADY_EXISTS)
    assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="keep"))).orchestrationState.name == "Orch"
