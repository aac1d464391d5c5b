"""RaiseEvent, TerminateInstance, SuspendInstance and ResumeInstance over a real port."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2

from scheduler import protocol
from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import MAX_PAYLOAD, eventually, prefix_keys, rpc_error, snapshot


def text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def at(ms_ahead: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns() + ms_ahead * 1_000_000)
    return ts


async def start(stub, iid: str, ms_ahead: int | None = None, payload: str | None = None) -> int | None:
    """Start an instance (scheduled ``ms_ahead`` from now if given); returns its due ms."""
    request = pb.CreateInstanceRequest(instanceId=iid, name="Orch")
    if payload is not None:
        request.input.value = payload
    if ms_ahead is not None:
        request.scheduledStartTimestamp.CopyFrom(at(ms_ahead))
    await stub.StartInstance(request)
    return protocol.due_ms(request.scheduledStartTimestamp) if ms_ahead is not None else None


async def state(stub, iid: str) -> pb.OrchestrationState:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid, getInputsAndOutputs=True))
    assert reply.exists
    return reply.orchestrationState


async def placement(redis, pk, iid: str) -> tuple[bool, bool, int]:
    """(in due, in ready, Redis time ms), read atomically."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zscore(pk.due, iid)
        pipe.zscore(pk.ready, iid)
        pipe.time()
        due, ready, (seconds, micros) = await pipe.execute()
    return due is not None, ready is not None, seconds * 1000 + micros // 1000


CALLS = {
    "RaiseEvent": lambda iid: pb.RaiseEventRequest(instanceId=iid, name="E"),
    "TerminateInstance": lambda iid: pb.TerminateRequest(instanceId=iid),
    "SuspendInstance": lambda iid: pb.SuspendRequest(instanceId=iid),
    "ResumeInstance": lambda iid: pb.ResumeRequest(instanceId=iid),
}


@pytest.mark.parametrize("method", sorted(CALLS))
async def test_unknown_instance_or_hub_is_not_found(stub, redis, key_prefix, method):
    await start(stub, "known")
    before = await snapshot(redis, key_prefix)
    message = await rpc_error(getattr(stub, method)(CALLS[method]("nope")), grpc.StatusCode.NOT_FOUND)
    assert "'nope'" in message and "not found" in message
    message = await rpc_error(getattr(stub, method)(CALLS[method]("known"), metadata=(("taskhub", "no-such-hub"),)),
                              grpc.StatusCode.NOT_FOUND)
    assert "'known'" in message and "not found" in message
    assert await snapshot(redis, key_prefix) == before, "nothing written, no hub created"


BAD = [
    ("RaiseEvent", pb.RaiseEventRequest(instanceId="i", name=""), grpc.StatusCode.INVALID_ARGUMENT,
     "name is required"),
    ("RaiseEvent", pb.RaiseEventRequest(instanceId="i", name="E", input=text("x" * (MAX_PAYLOAD + 1))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, f"input is {MAX_PAYLOAD + 1} bytes"),
    ("RaiseEvent", pb.RaiseEventRequest(instanceId="", name="E"), grpc.StatusCode.INVALID_ARGUMENT,
     "instanceId is required"),
    ("TerminateInstance", pb.TerminateRequest(instanceId="i", output=text("y" * (MAX_PAYLOAD + 1))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, f"output is {MAX_PAYLOAD + 1} bytes"),
    ("TerminateInstance", pb.TerminateRequest(instanceId="i\x00"), grpc.StatusCode.INVALID_ARGUMENT,
     "control characters"),
    ("SuspendInstance", pb.SuspendRequest(instanceId="i", reason=text("z" * (MAX_PAYLOAD + 1))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "reason is"),
    ("ResumeInstance", pb.ResumeRequest(instanceId="i" * 257), grpc.StatusCode.INVALID_ARGUMENT,
     "257 characters long"),
]


@pytest.mark.parametrize("method,request_,code,fragment", BAD)
async def test_bad_input_is_rejected_and_nothing_is_written(stub, redis, key_prefix, method, request_, code, fragment):
    await start(stub, "i", ms_ahead=60_000)
    before = await snapshot(redis, key_prefix)
    message = await rpc_error(getattr(stub, method)(request_), code)
    assert fragment in message
    assert await snapshot(redis, key_prefix) == before


async def test_raise_event_lands_in_the_inbox_and_the_instance_stays_scheduled(stub, app, redis, hub_name):
    due = await start(stub, "ev", ms_ahead=60_000)
    pk = (await app.store.ensure_hub(hub_name)).for_instance("ev")
    await stub.RaiseEvent(pb.RaiseEventRequest(instanceId="ev", name="Approval", input=text('"yes"')))
    events = [pb.HistoryEvent.FromString(e) for e in await redis.lrange(pk.inbox("ev"), 0, -1)]
    assert [e.WhichOneof("eventType") for e in events] == ["executionStarted", "eventRaised"]
    assert (events[1].eventRaised.name, events[1].eventRaised.input.value) == ("Approval", '"yes"')
    assert await redis.zscore(pk.due, "ev") == due and await redis.zscore(pk.ready, "ev") is None
    assert (await state(stub, "ev")).orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING


async def test_terminate_shows_status_output_and_keeps_the_input(stub, app, redis, hub_name):
    await start(stub, "t", ms_ahead=60_000, payload='{"n": 1}')
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="t", output=text('"cancelled"'), recursive=True))
    s = await state(stub, "t")
    assert s.orchestrationStatus == pb.ORCHESTRATION_STATUS_TERMINATED
    assert (s.output.value, s.input.value) == ('"cancelled"', '{"n": 1}')
    assert s.HasField("completedTimestamp") and s.HasField("scheduledStartTimestamp")
    assert s.completedTimestamp == s.lastUpdatedTimestamp
    hub = await app.store.ensure_hub(hub_name)
    pk = hub.for_instance("t")
    assert await redis.zscore(pk.due, "t") is None and await redis.zscore(pk.ready, "t") is None
    last = pb.HistoryEvent.FromString(await redis.lindex(pk.history("t"), -1))
    assert last.executionTerminated.input.value == '"cancelled"' and last.executionTerminated.recurse
    # Terminating again succeeds and changes nothing (as the SDK's reference backend).
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="t", output=text('"other"')))
    assert (await state(stub, "t")) == s
    assert (await app.store.hub_stats(hub)).statuses == {"TERMINATED": 1}


async def test_wait_for_start_returns_promptly_when_the_instance_is_terminated(stub, app, hub_name):
    await start(stub, "w", ms_ahead=60_000)
    waiting = asyncio.ensure_future(stub.WaitForInstanceStart(pb.GetInstanceRequest(instanceId="w"), timeout=30))

    async def registered() -> bool:
        return (hub_name, "w") in app.engine.waiters._waiting  # noqa: SLF001 - a waiter registered

    await eventually(registered)
    assert not waiting.done()
    t0 = time.monotonic()
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="w"))
    reply = await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - t0 < 1.0, "woken by the status message, not the slow re-check"
    assert reply.exists and reply.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_TERMINATED


async def test_suspended_scheduled_instance_is_held_past_its_due_time_until_resumed(stub, app, redis, hub_name):
    due = await start(stub, "held", ms_ahead=300)
    pk = (await app.store.ensure_hub(hub_name)).for_instance("held")
    await stub.SuspendInstance(pb.SuspendRequest(instanceId="held", reason=text("wait")))
    assert (await state(stub, "held")).orchestrationStatus == pb.ORCHESTRATION_STATUS_SUSPENDED
    looks = 0

    async def well_past_due() -> bool:
        nonlocal looks
        in_due, in_ready, now = await placement(redis, pk, "held")
        assert not in_due and not in_ready, f"suspended instance queued at {now} (due {due})"
        looks += 1
        return now > due + 500

    await eventually(well_past_due, timeout=5, interval=0.02)
    assert looks > 10
    await stub.ResumeInstance(pb.ResumeRequest(instanceId="held", reason=text("go")))

    async def ready() -> bool:
        return (await placement(redis, pk, "held"))[1]

    await eventually(ready)
    s = await state(stub, "held")
    assert s.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
    kinds = [pb.HistoryEvent.FromString(e).WhichOneof("eventType") for e in await redis.lrange(pk.inbox("held"), 0, -1)]
    assert kinds == ["executionStarted", "executionSuspended", "executionResumed"]


async def test_resumed_before_its_due_time_it_is_promoted_at_that_time(stub, app, redis, hub_name):
    due = await start(stub, "later", ms_ahead=400)
    pk = (await app.store.ensure_hub(hub_name)).for_instance("later")
    await stub.SuspendInstance(pb.SuspendRequest(instanceId="later"))
    await stub.ResumeInstance(pb.ResumeRequest(instanceId="later"))
    assert await redis.zscore(pk.due, "later") == due

    async def promoted() -> bool:
        in_due, in_ready, now = await placement(redis, pk, "later")
        if in_ready:
            assert now >= due, f"promoted {due - now} ms early"
        return in_ready and not in_due

    await eventually(promoted, timeout=5)


async def test_suspend_twice_and_resume_when_not_suspended_succeed_without_change(stub, redis, key_prefix):
    await start(stub, "s", ms_ahead=60_000)
    await stub.ResumeInstance(pb.ResumeRequest(instanceId="s"))  # not suspended: nothing to do
    assert (await state(stub, "s")).orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
    await stub.SuspendInstance(pb.SuspendRequest(instanceId="s"))
    before = await snapshot(redis, key_prefix)
    await stub.SuspendInstance(pb.SuspendRequest(instanceId="s"))
    assert await snapshot(redis, key_prefix) == before
    assert any(k.endswith(":inbox:s") for k in await prefix_keys(redis, key_prefix))


async def test_wait_for_start_keeps_waiting_while_a_never_started_instance_is_suspended(stub):
    at = timestamp_pb2.Timestamp()
    at.FromNanoseconds(time.time_ns() + 600 * 10**9)
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="held", name="Orch", scheduledStartTimestamp=at))
    await stub.SuspendInstance(pb.SuspendRequest(instanceId="held"))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WaitForInstanceStart(pb.GetInstanceRequest(instanceId="held"), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started >= 0.3  # it waited; it did not return the SUSPENDED state at once
