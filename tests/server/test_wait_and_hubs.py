"""WaitForInstanceStart, CreateTaskHub / DeleteTaskHub, unimplemented RPCs and health."""
from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import message_factory, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.store import keys
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.app import SERVICE_NAME
from scheduler.api.servicer import SERVICE as SERVICE_DESCRIPTOR, WAIT_DEADLINE_MARGIN
from server_helpers import PARTITIONS, prefix_keys, rpc_error, snapshot


def delayed(iid: str, seconds: float = 600) -> pb.CreateInstanceRequest:
    at = timestamp_pb2.Timestamp()
    at.FromNanoseconds(time.time_ns() + int(seconds * 1e9))
    return pb.CreateInstanceRequest(instanceId=iid, name="Orch", scheduledStartTimestamp=at)


async def test_wait_for_start_times_out_while_scheduled(stub):
    await stub.StartInstance(delayed("later"))
    started = time.monotonic()
    message = await rpc_error(stub.WaitForInstanceStart(pb.GetInstanceRequest(instanceId="later"), timeout=0.5),
                              grpc.StatusCode.DEADLINE_EXCEEDED)
    # The server answers WAIT_DEADLINE_MARGIN before the deadline, so that its answer gets through.
    assert 0.5 - WAIT_DEADLINE_MARGIN - 0.02 <= time.monotonic() - started < 3
    assert message


async def test_wait_for_start_of_unknown_id_answers_exists_false_at_deadline(stub):
    started = time.monotonic()
    got = await stub.WaitForInstanceStart(pb.GetInstanceRequest(instanceId="never"), timeout=0.5)
    assert got.exists is False
    assert time.monotonic() - started < 0.6


async def test_wait_for_start_returns_when_the_status_changes(stub, app, redis, hub_name):
    await stub.StartInstance(delayed("waits"))
    call = stub.WaitForInstanceStart(pb.GetInstanceRequest(instanceId="waits"), timeout=10)
    waiter = asyncio.ensure_future(call)
    hub = await app.store.ensure_hub(hub_name)
    # Nothing dispatches yet: play the dispatcher's part (status change and its wake-up announcement).
    await asyncio.wait_for(app.engine.wakeups.connected.wait(), 5)
    assert not waiter.done()
    await redis.hset(hub.for_instance("waits").instance("waits"), "status", "RUNNING")
    started = time.monotonic()
    await redis.publish(keys.events_channel(app.config.key_prefix), f"{hub_name} status waits")
    got = await waiter
    assert time.monotonic() - started < 2  # woken by the announcement, not by the 5 s re-check
    assert got.exists and got.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_RUNNING


async def start_some(stub, hub: str | None = None) -> list[str]:
    metadata = (("taskhub", hub),) if hub else None
    ids = [f"i-{n}" for n in range(6)]
    for n, iid in enumerate(ids):
        req = delayed(iid) if n % 2 else pb.CreateInstanceRequest(instanceId=iid, name="Orch")
        await stub.StartInstance(req, metadata=metadata)
    return ids


async def exists(stub, iid: str, hub: str | None = None) -> bool:
    metadata = (("taskhub", hub),) if hub else None
    return (await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid), metadata=metadata)).exists


async def test_create_task_hub_without_recreate_is_idempotent(stub, redis, key_prefix):
    ids = await start_some(stub)
    before = await snapshot(redis, key_prefix)
    await stub.CreateTaskHub(pb.CreateTaskHubRequest(recreateIfExists=False))
    await stub.CreateTaskHub(pb.CreateTaskHubRequest())
    assert await snapshot(redis, key_prefix) == before
    assert all([await exists(stub, iid) for iid in ids])


def tombstones(hub: keys.HubKeys) -> set[str]:
    return {pk.generation for pk in hub.all_partitions()}


async def hub_keys(redis, key_prefix: str, hub: keys.HubKeys) -> set[str]:
    return {k for k in await prefix_keys(redis, key_prefix) if hub.owns(k)}


async def test_create_task_hub_with_recreate_wipes_the_hub(stub, redis, key_prefix, hub_name):
    ids = await start_some(stub)
    other_ids = await start_some(stub, hub=hub_name + "-keep")
    await stub.CreateTaskHub(pb.CreateTaskHubRequest(recreateIfExists=True))
    hub = keys.HubKeys(key_prefix, hub_name, PARTITIONS)
    assert await hub_keys(redis, key_prefix, hub) == {hub.meta} | tombstones(hub)
    assert not any([await exists(stub, iid) for iid in ids])
    assert all([await exists(stub, iid, hub=hub_name + "-keep") for iid in other_ids])


async def test_delete_task_hub_removes_its_instances_only(stub, redis, key_prefix, hub_name):
    other = hub_name + "-2"  # a look-alike name
    ids = await start_some(stub, hub=other)
    await start_some(stub)
    await stub.DeleteTaskHub(pb.DeleteTaskHubRequest())
    hub = keys.HubKeys(key_prefix, hub_name, PARTITIONS)
    assert await hub_keys(redis, key_prefix, hub) == tombstones(hub)  # sealed against late writers; they expire
    assert all([await exists(stub, iid, hub=other) for iid in ids])
    assert await redis.smembers(keys.hubs_key(key_prefix)) == {other.encode()}
    await stub.DeleteTaskHub(pb.DeleteTaskHubRequest())  # deleting again is harmless
    assert not await exists(stub, "i-0")


async def test_delete_task_hub_by_metadata(stub, key_prefix, hub_name):
    other = hub_name + "-x"
    ids = await start_some(stub, hub=other)
    await start_some(stub)
    await stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=(("taskhub", other),))
    assert not any([await exists(stub, iid, hub=other) for iid in ids])
    assert await exists(stub, "i-0")


async def test_every_rpc_of_the_contract_answers_something_else_than_unimplemented(stub):
    for method in SERVICE_DESCRIPTOR.methods:
        request = message_factory.GetMessageClass(method.input_type)()
        call = getattr(stub, method.name)(request, timeout=2)
        try:
            if method.server_streaming:
                await asyncio.wait_for(call.read(), 1)
            else:
                await call
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
            assert code != grpc.StatusCode.UNIMPLEMENTED, f"{method.name}: {exc}"
        finally:
            call.cancel()


async def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_stop_lets_a_running_housekeeping_job_finish(start_app, redis_url, key_prefix, hub_name, caplog):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name)
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow_step() -> None:
        started.set()
        await asyncio.sleep(0.3)  # a step under way when the replica is told to stop
        finished.set()

    app.add_housekeeping(slow_step, 0.05)
    await asyncio.wait_for(started.wait(), 5)
    await app.stop(grace=5)
    assert finished.is_set(), "the running step was cancelled instead of finishing"
    assert not [r for r in caplog.records if "raised an exception" in r.getMessage()]
