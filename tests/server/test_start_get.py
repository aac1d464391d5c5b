"""Hello, StartInstance and GetInstance over a real port; task hub selection by metadata."""
from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import empty_pb2, timestamp_pb2, wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.protocol import quote
from server_helpers import prefix_keys, rpc_error


def sv(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


async def get(stub, iid: str, payloads: bool = True, hub: str | None = None) -> pb.GetInstanceResponse:
    metadata = (("taskhub", hub),) if hub else None
    return await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid, getInputsAndOutputs=payloads),
                                  metadata=metadata)


async def test_hello(stub):
    assert await stub.Hello(empty_pb2.Empty()) == empty_pb2.Empty()


async def test_start_with_empty_id_generates_one(stub):
    first = await stub.StartInstance(pb.CreateInstanceRequest(name="Orch"))
    second = await stub.StartInstance(pb.CreateInstanceRequest(name="Orch"))
    assert first.instanceId and second.instanceId and first.instanceId != second.instanceId
    for iid in (first.instanceId, second.instanceId):
        got = await get(stub, iid)
        assert got.exists and got.orchestrationState.instanceId == iid


async def test_every_field_round_trips(stub, app):
    scheduled = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600, nanos=123_456_789)
    before = await app.store.server_time_ms()
    req = pb.CreateInstanceRequest(
        instanceId="full-1", name="MyOrchestration", version=sv("1.2.3"), input=sv('{"x": [1, 2]}'),
        executionId=sv("exec-given"), tags={"team": "payments", "ü": "ñ"}, scheduledStartTimestamp=scheduled)
    assert (await stub.StartInstance(req)).instanceId == "full-1"
    after = await app.store.server_time_ms()

    got = await get(stub, "full-1", payloads=True)
    assert got.exists
    s = got.orchestrationState
    assert (s.instanceId, s.name, s.version.value) == ("full-1", "MyOrchestration", "1.2.3")
    assert s.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
    assert s.input.value == '{"x": [1, 2]}'
    assert s.executionId.value == "exec-given"
    assert dict(s.tags) == {"team": "payments", "ü": "ñ"}
    assert s.scheduledStartTimestamp == scheduled  # exactly as given, nanos included
    assert before <= s.createdTimestamp.ToMilliseconds() <= after
    assert s.lastUpdatedTimestamp == s.createdTimestamp
    for absent in ("output", "customStatus", "completedTimestamp", "failureDetails", "parentInstanceId"):
        assert not s.HasField(absent), absent


async def test_payloads_only_when_asked_for(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="p-1", name="O", input=sv('"in"'),
                                                      version=sv("v")))
    without = (await get(stub, "p-1", payloads=False)).orchestrationState
    assert not without.HasField("input") and not without.HasField("output")
    assert not without.HasField("customStatus")
    assert without.version.value == "v" and without.name == "O"  # everything else is still there
    assert (await get(stub, "p-1", payloads=True)).orchestrationState.input.value == '"in"'


async def test_execution_id_is_generated_when_not_given(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="gen-exec", name="O"))
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="gen-exec-2", name="O", executionId=sv("")))
    one = (await get(stub, "gen-exec")).orchestrationState.executionId.value
    two = (await get(stub, "gen-exec-2")).orchestrationState.executionId.value
    assert one and two and one != two
    assert (await get(stub, "gen-exec")).orchestrationState.executionId.value == one  # stable


async def test_start_now_has_no_scheduled_start(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="now-1", name="O"))
    s = (await get(stub, "now-1")).orchestrationState
    assert not s.HasField("scheduledStartTimestamp") and not s.HasField("version") and not s.HasField("input")
    assert not s.tags


async def test_get_unknown_instance(stub):
    got = await get(stub, "does-not-exist")
    assert got.exists is False and not got.HasField("orchestrationState")


async def test_taskhub_metadata_selects_the_hub(stub, hub_name):
    other = hub_name + "-b"
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="in-a", name="O"))
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="in-b", name="O"), metadata=(("taskhub", other),))
    assert (await get(stub, "in-a")).exists
    assert (await get(stub, "in-a", hub=hub_name)).exists
    assert not (await get(stub, "in-a", hub=other)).exists
    assert (await get(stub, "in-b", hub=other)).exists
    assert not (await get(stub, "in-b")).exists


async def test_same_id_in_two_hubs_is_two_instances(stub, hub_name):
    other = hub_name + "-c"
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="twin", name="A"))
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="twin", name="B"), metadata=(("taskhub", other),))
    assert (await get(stub, "twin")).orchestrationState.name == "A"
    assert (await get(stub, "twin", hub=other)).orchestrationState.name == "B"


async def test_invalid_taskhub_name_is_rejected(stub, redis, key_prefix):
    for bad in ("bad name", "hub*", "a:b", "h" * 65):
        message = await rpc_error(get(stub, "x", hub=bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert "taskhub" in message and "task hub name" in message
        message = await rpc_error(
            stub.StartInstance(pb.CreateInstanceRequest(name="O"), metadata=(("taskhub", bad),)),
            grpc.StatusCode.INVALID_ARGUMENT)
        assert quote(bad) in message
    assert not [k for k in await prefix_keys(redis, key_prefix) if "inst:" in k]


async def test_concurrent_requests_each_get_their_own_reply(stub):
    # Concurrent calls share round trips to Redis (auto-pipelining): every reply must reach its own caller.
    ids = [f"c-{n}" for n in range(200)]
    started = await asyncio.gather(*(stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="O",
                                                                                  input=sv(iid))) for iid in ids))
    assert [r.instanceId for r in started] == ids
    got = await asyncio.gather(*(get(stub, iid) for iid in ids + ["missing"] * 20))
    assert [g.orchestrationState.input.value for g in got[:200]] == ids
    assert [g.exists for g in got[200:]] == [False] * 20


async def test_concurrent_starts_of_one_id_have_one_winner(stub):
    outcomes = await asyncio.gather(*(stub.StartInstance(pb.CreateInstanceRequest(instanceId="race", name="O",
                                                                                  input=sv(str(n))))
                                      for n in range(20)), return_exceptions=True)
    winners = [n for n, o in enumerate(outcomes) if isinstance(o, pb.CreateInstanceResponse)]
    assert len(winners) == 1
    assert all(o.code() == grpc.StatusCode.ALREADY_EXISTS for o in outcomes if isinstance(o, grpc.aio.AioRpcError))
    assert (await get(stub, "race")).orchestrationState.input.value == str(winners[0])
