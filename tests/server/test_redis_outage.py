"""Redis goes away: RPCs answer UNAVAILABLE; when it returns the same App recovers by itself."""
from __future__ import annotations

import asyncio
import time

import grpc
import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import PARTITIONS, eventually, own_redis_server, rpc_error


async def test_unavailable_while_redis_is_down_then_recovers(start_app, key_prefix, hub_name):
    with own_redis_server() as redis_server:
        app = await start_app(redis_url=f"redis://127.0.0.1:{redis_server.port}/0", key_prefix=key_prefix,
                              task_hub=hub_name, partitions=PARTITIONS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def health_is(status) -> bool:
                return (await health.Check(health_pb2.HealthCheckRequest())).status == status

            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="before", name="O"))

            redis_server.stop()
            for call in (stub.StartInstance(pb.CreateInstanceRequest(instanceId="during", name="O"), timeout=10),
                         stub.GetInstance(pb.GetInstanceRequest(instanceId="before"), timeout=10)):
                message = await rpc_error(call, grpc.StatusCode.UNAVAILABLE)
                assert "Redis is unavailable" in message and "retry later" in message
            await eventually(lambda: health_is(health_pb2.HealthCheckResponse.NOT_SERVING), timeout=5)

            redis_server.start()  # same port, same App

            async def start_succeeds() -> bool:
                try:
                    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="O"), timeout=5)
                    return True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    return False

            await eventually(start_succeeds, timeout=15, interval=0.05)
            # Recovered for good: concurrent calls (which use every pooled connection) all succeed.
            replies = await asyncio.gather(*(stub.GetInstance(pb.GetInstanceRequest(instanceId=iid), timeout=5)
                                             for iid in ["after"] * 20), return_exceptions=True)
            assert [r for r in replies if isinstance(r, Exception)] == []
            assert all(r.exists and r.orchestrationState.name == "O" for r in replies)
            await eventually(lambda: health_is(health_pb2.HealthCheckResponse.SERVING), timeout=5)

            # The background promoter recovered too: a delayed start made now is promoted.
            at = timestamp_pb2.Timestamp()
            at.FromNanoseconds(time.time_ns() + 100_000_000)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="delayed", name="O",
                                                              scheduledStartTimestamp=at))
            hub = await app.store.ensure_hub(hub_name)
            observer = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")

            async def promoted() -> bool:
                return await observer.zscore(hub.for_instance("delayed").ready, "delayed") is not None

            try:
                await eventually(promoted, timeout=5)
            finally:
                await observer.aclose()


async def test_app_starts_while_redis_is_down_and_serves_once_it_is_up(start_app, key_prefix, hub_name):
    with own_redis_server() as redis_server:
        redis_server.stop()
        app = await start_app(redis_url=f"redis://127.0.0.1:{redis_server.port}/0", key_prefix=key_prefix,
                              task_hub=hub_name, partitions=PARTITIONS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await rpc_error(stub.GetInstance(pb.GetInstanceRequest(instanceId="x"), timeout=10),
                            grpc.StatusCode.UNAVAILABLE)
            redis_server.start()

            async def get_succeeds() -> bool:
                try:
                    return not (await stub.GetInstance(pb.GetInstanceRequest(instanceId="x"), timeout=5)).exists
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    return False

            await eventually(get_succeeds, timeout=15, interval=0.05)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="x", name="O"), timeout=5)
            assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="x"))).exists
