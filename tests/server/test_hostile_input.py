"""Hostile and oversized input over a real port: every rejection is a clear status, one log line, nothing written."""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_exceptions
from google.protobuf import descriptor, duration_pb2, empty_pb2, message_factory, wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import PARTITIONS, eventually, next_work, own_redis_server, rpc_error, snapshot

SERVICE = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
# What a hostile request may get: a status that names a problem with the request (or an RPC this server lacks).
ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.UNIMPLEMENTED}
# A request of these that parses waits for its instance until the caller's deadline: DEADLINE_EXCEEDED is
# what the caller asked for when the instance exists (the server answers it before the deadline, with a message).
WAITS = {"WaitForInstanceStart", "WaitForInstanceCompletion"}
SHORT = 500  # characters: a rejection's message must stay readable whatever the input was
BIG = 100_000


def raw_call(channel: grpc.aio.Channel, name: str):
    return channel.unary_unary(f"/{SERVICE.full_name}/{name}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


def sample(message_descriptor: descriptor.Descriptor, depth: int = 0):
    """A request with every field set (first member of each oneof), to truncate at any byte."""
    message = message_factory.GetMessageClass(message_descriptor)()
    seen_oneofs = set()
    for field in message_descriptor.fields:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(field.containing_oneof.name)
        repeated = field.is_repeated
        if field.type == field.TYPE_MESSAGE:
            if depth >= 2 or field.message_type.GetOptions().map_entry:
                continue
            target = getattr(message, field.name).add() if repeated else getattr(message, field.name)
            target.CopyFrom(sample(field.message_type, depth + 1))
            continue
        if field.type == field.TYPE_STRING:
            value = f"fuzz-{field.name}"
        elif field.type == field.TYPE_BYTES:
            value = b"fuzz"
        elif field.type == field.TYPE_BOOL:
            value = True
        elif field.type == field.TYPE_ENUM:
            value = field.enum_type.values[-1].number
        elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            value = 1.5
        else:
            value = 3
        if repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)
    return message


def hostile_payloads(method: descriptor.MethodDescriptor, rng: random.Random) -> list[bytes]:
    payloads = [rng.randbytes(rng.choice([1, 2, 5, 17, 64, 300])) for _ in range(25)]
    valid = sample(method.input_type).SerializeToString()
    cuts = sorted({len(valid) * i // 10 for i in range(10)} | {len(valid) - 1, len(valid)})
    return payloads + [valid[:cut] for cut in cuts if cut >= 0]  # and the whole of it


async def test_random_and_truncated_bytes_get_a_clear_status_and_write_nothing(channel, redis, key_prefix, stub):
    rng = random.Random(20240611)
    unary = [m for m in SERVICE.methods if not m.server_streaming]
    assert len(unary) > 20
    outcomes: dict[str, set[str]] = {}
    for method in unary:
        call = raw_call(channel, method.name)
        timeout = 0.3 if method.name in WAITS else 10
        acceptable = ACCEPTABLE | {grpc.StatusCode.DEADLINE_EXCEEDED} if method.name in WAITS else ACCEPTABLE
        for payload in hostile_payloads(method, rng):
            before = await snapshot(redis, key_prefix)
            try:
                await call(payload, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in acceptable, (method.name, payload, exc.code(), exc.details())
                assert len(exc.details() or "") < SHORT, (method.name, payload, exc.details())
                outcomes.setdefault(method.name, set()).add(exc.code().name)
                assert await snapshot(redis, key_prefix) == before, (method.name, payload, exc.code())
            else:
                outcomes.setdefault(method.name, set()).add("OK")
    # The bytes did reach the handlers: bytes that do not parse were rejected as such, not ignored.
    assert "INVALID_ARGUMENT" in outcomes["StartInstance"]
    assert "INVALID_ARGUMENT" in outcomes["CompleteOrchestratorTask"]
    await stub.Hello(empty_pb2.Empty(), timeout=5)  # the server is still there


async def test_bytes_that_do_not_parse_are_invalid_argument(channel, redis, key_prefix):
    valid = pb.CreateInstanceRequest(instanceId="parsed", name="Orch").SerializeToString()
    before = await snapshot(redis, key_prefix)
    for payload in (b"\xff\xff\xff", valid[:-2], b"\x0a\x7f" + b"x"):  # bad tag, cut string, length past end
        message = await rpc_error(raw_call(channel, "StartInstance")(payload), grpc.StatusCode.INVALID_ARGUMENT)
        assert "could not be parsed" in message and len(message) < SHORT
    assert await snapshot(redis, key_prefix) == before


BAD_TOKENS = ["x", "h|notdigits|o|i|r", "h|1|a|no-newlines|r", "h|1|o||r", "h|1|o|bad\x01id|r",
              "garbage" * (BIG // 7)]


def _with_token(method: str, token: str):
    if method == "CompleteOrchestratorTask":
        return pb.OrchestratorResponse(completionToken=token)
    if method == "CompleteActivityTask":
        return pb.ActivityResponse(completionToken=token)
    if method == "AbandonTaskOrchestratorWorkItem":
        return pb.AbandonOrchestrationTaskRequest(completionToken=token)
    return pb.AbandonActivityTaskRequest(completionToken=token)


@pytest.mark.parametrize("method", ["CompleteOrchestratorTask", "CompleteActivityTask",
                                    "AbandonTaskOrchestratorWorkItem", "AbandonTaskActivityWorkItem"])
async def test_a_malformed_completion_token_is_invalid_argument(stub, redis, key_prefix, method):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="i", name="Orch"))  # something to leave alone
    before = await snapshot(redis, key_prefix)
    for token in BAD_TOKENS:
        message = await rpc_error(getattr(stub, method)(_with_token(method, token)), grpc.StatusCode.INVALID_ARGUMENT)
        assert "completionToken" in message and len(message) < SHORT, message
    assert await snapshot(redis, key_prefix) == before


async def test_a_purge_timeout_outside_the_duration_range_is_invalid_argument(stub, redis, key_prefix):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="i", name="Orch"))
    before = await snapshot(redis, key_prefix)
    for seconds in (10 ** 15, -(10 ** 15)):
        request = pb.PurgeInstancesRequest(purgeInstanceFilter=pb.PurgeInstanceFilter(
            timeout=duration_pb2.Duration(seconds=seconds)))
        message = await rpc_error(stub.PurgeInstances(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert "timeout" in message and len(message) < SHORT, message
    assert await snapshot(redis, key_prefix) == before


async def test_a_huge_continuation_token_is_invalid_argument_with_a_short_message(stub, redis, key_prefix):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="i", name="Orch"))
    before = await snapshot(redis, key_prefix)
    token = wrappers_pb2.StringValue(value="z" * BIG)
    for call in (stub.QueryInstances(pb.QueryInstancesRequest(query=pb.InstanceQuery(continuationToken=token))),
                 stub.ListInstanceIds(pb.ListInstanceIdsRequest(lastInstanceKey=token))):
        message = await rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert len(message) < SHORT and f"({BIG} characters)" in message, message[:1000]
    assert await snapshot(redis, key_prefix) == before


async def test_a_rejection_logs_one_line_without_a_traceback(stub, caplog):
    caplog.set_level(logging.INFO, logger="scheduler.api.status")
    await rpc_error(stub.CompleteOrchestratorTask(pb.OrchestratorResponse(completionToken="x" * BIG)),
                    grpc.StatusCode.INVALID_ARGUMENT)
    records = [r for r in caplog.records if r.name == "scheduler.api.status"]
    assert len(records) == 1, [r.getMessage()[:200] for r in records]
    record = records[0]
    assert record.levelno == logging.INFO and record.exc_info is None and record.exc_text is None
    line = record.getMessage()
    assert line.startswith("CompleteOrchestratorTask rejected: INVALID_ARGUMENT ")
    assert "\n" not in line and len(line) < SHORT


async def test_raise_event_past_the_inbox_limit_is_refused(start_app, redis_url, key_prefix, hub_name, redis):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          max_inbox_events=5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="inbox", name="Orch"))
        # Its first episode ends without actions: RUNNING, waiting for events, with an empty inbox (before its
        # first run the start event waits in the inbox too, and counts against the limit).
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        item = await next_work(call)
        await stub.CompleteOrchestratorTask(pb.OrchestratorResponse(completionToken=item.completionToken))
        call.cancel()
        await eventually(lambda: _unleased(redis, app, "inbox"))
        for n in range(5):
            await stub.RaiseEvent(pb.RaiseEventRequest(instanceId="inbox", name="E",
                                                       input=wrappers_pb2.StringValue(value=str(n))))
        before = await snapshot(redis, key_prefix)
        message = await rpc_error(stub.RaiseEvent(pb.RaiseEventRequest(instanceId="inbox", name="E")),
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "inbox" in message and len(message) < SHORT, message
        assert await snapshot(redis, key_prefix) == before


async def _unleased(redis, app, iid: str) -> bool:
    hub = app.store.cached_hub(app.config.task_hub)
    return await redis.zscore(hub.for_instance(iid).leases, f"o|{iid}") is None


async def test_raise_event_past_the_work_item_budget_is_refused(start_app, redis_url, key_prefix, hub_name, redis):
    # Work item budget: history + pending events <= 256 KiB - 64 KiB = 196608 bytes. The start event (with its
    # 100 KB input) and one 60 KB event fit; a second 60 KB event does not (each payload is within the 180 KB limit).
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          max_message_bytes=262144, max_payload_bytes=180000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="budget", name="Orch",
                                                          input=wrappers_pb2.StringValue(value="i" * 100_000)))
        event = pb.RaiseEventRequest(instanceId="budget", name="E", input=wrappers_pb2.StringValue(value="e" * 60_000))
        await stub.RaiseEvent(event)
        before = await snapshot(redis, key_prefix)
        message = await rpc_error(stub.RaiseEvent(event), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "196608 bytes" in message and len(message) < SHORT, message
        assert await snapshot(redis, key_prefix) == before
        # A small event still fits: the refusal was about the bytes, not the count.
        await stub.RaiseEvent(pb.RaiseEventRequest(instanceId="budget", name="E"))


@contextlib.asynccontextmanager
async def redis_out_of_memory() -> AsyncIterator[tuple[str, aioredis.Redis, Callable[[], Awaitable[None]]]]:
    """A redis-server of the test's own that refuses writes (maxmemory reached, noeviction) once the body
    calls ``fill()``; yields (its URL, a client, fill)."""
    with own_redis_server() as redis_server:
        url = f"redis://127.0.0.1:{redis_server.port}/0"
        client = aioredis.Redis.from_url(url)

        async def fill() -> None:
            used = (await client.info("memory"))["used_memory"]
            await client.config_set("maxmemory-policy", "noeviction")
            await client.config_set("maxmemory", used + 1024 * 1024)
            for n in range(1000):  # up to maxmemory
                try:
                    await client.set(f"filler:{n}", b"f" * 64 * 1024)
                except redis_exceptions.OutOfMemoryError:
                    return
            raise AssertionError("Redis never refused a write")

        try:
            yield url, client, fill
        finally:
            await client.config_set("maxmemory", 0)
            await client.aclose()


async def test_redis_out_of_memory_is_resource_exhausted(start_app, key_prefix, hub_name):
    async with redis_out_of_memory() as (url, client, fill):
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="before", name="Orch"))
            await fill()
            before = await snapshot(client, key_prefix)
            message = await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="Orch")),
                                      grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "memory" in message and len(message) < SHORT, message
            assert await snapshot(client, key_prefix) == before
            await client.config_set("maxmemory", 0)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="Orch"))  # and it recovers


async def test_redis_out_of_memory_on_a_new_task_hub_is_resource_exhausted(start_app, key_prefix, hub_name):
    async with redis_out_of_memory() as (url, client, fill):
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await fill()
            before = await snapshot(client, key_prefix)
            # The hub is created on first use: its creation (INCR of the generation counter) is refused.
            message = await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="Orch"),
                                                         metadata=(("taskhub", hub_name + "-new"),)),
                                      grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "memory" in message and len(message) < SHORT, message
            assert await snapshot(client, key_prefix) == before

