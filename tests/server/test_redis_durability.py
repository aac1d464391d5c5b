"""Redis and durability: a write waits for replicas when asked (WAIT), a Redis that comes back without
the dataset's identity is refused until an operator adopts it, and Redis' coming back is logged."""
from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import grpc
import prometheus_client
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.store import keys
from scheduler.store.pipelining import CommandNotSent, PipelinedConnection
from scheduler.testing import redis_sentinels
from server_helpers import PARTITIONS, eventually, own_redis_server, rpc_error


def _lost_gauge() -> float:
    return prometheus_client.REGISTRY.get_sample_value("dt_redis_dataset_lost")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], capture_output=True, text=True, timeout=60)


async def test_an_emptied_redis_is_refused_until_an_operator_adopts_it(start_app, key_prefix, hub_name, caplog):
    caplog.set_level(logging.INFO)
    with own_redis_server() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
        observer = aioredis.Redis.from_url(url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def readiness_is(status) -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
                return reply.status == status

            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="before", name="O"))
            assert _lost_gauge() == 0

            await observer.flushall()  # Redis comes back empty (a restart without persistence, a new volume)

            await eventually(lambda: readiness_is(health_pb2.HealthCheckResponse.NOT_SERVING), timeout=5)
            assert _lost_gauge() == 1
            message = await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="O")),
                                      grpc.StatusCode.UNAVAILABLE)
            assert "dataset identity is missing" in message and "dataset adopt" in message
            assert await observer.exists(keys.meta_key(key_prefix, hub_name)) == 0  # nothing written, the hub neither
            errors = [r for r in caplog.records if r.levelno == logging.ERROR and "DATASET LOST" in r.getMessage()]
            assert len(errors) == 1, "one ERROR line when the loss is found, not one per check"
            shown = _cli("inspect", "--redis-url", url, "--key-prefix", key_prefix, "--task-hub", hub_name)
            assert "dataset identity: MISSING" in shown.stdout and "LOST according to replicas" in shown.stdout, shown

            adopted = _cli("dataset", "adopt", "--redis-url", url, "--key-prefix", key_prefix)
            assert adopted.returncode == 0, adopted.stderr

            await eventually(lambda: readiness_is(health_pb2.HealthCheckResponse.SERVING), timeout=5)
            assert _lost_gauge() == 0
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="O"), timeout=5)
            shown = _cli("inspect", "--redis-url", url, "--key-prefix", key_prefix, "--task-hub", hub_name)
            assert "adopted" in shown.stdout and "LOST" not in shown.stdout, shown.stdout
        await observer.aclose()


async def test_a_replaced_dataset_is_refused_and_a_new_connection_writes_nothing_to_it(start_app, key_prefix,
                                                                                      hub_name):
    with own_redis_server() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
        observer = aioredis.Redis.from_url(url)
        # Another dataset's identity, as a Redis restored from another deployment's backup would hold
        await observer.hset(keys.dataset_key(key_prefix), "id", "someone-else")
        await eventually(lambda: asyncio.sleep(0, app.store.dataset_lost is not None), timeout=5)
        assert "someone-else" in app.store.dataset_lost
        # a new pipelined connection (a reconnection, a failover) checks the identity before it writes
        connection = PipelinedConnection(url)
        connection.identity = (keys.dataset_key(key_prefix), "id", app.store.dataset_id.encode())
        with pytest.raises(CommandNotSent, match="does not hold this dataset's identity"):
            await connection.execute("SET", f"{key_prefix}:probe", "1")
        assert await observer.exists(f"{key_prefix}:probe") == 0
        await connection.aclose()
        await observer.aclose()


async def test_one_line_when_redis_goes_and_one_when_it_comes_back(start_app, key_prefix, hub_name, caplog):
    caplog.set_level(logging.INFO, logger="scheduler.app")
    with own_redis_server() as server:
        app = await start_app(redis_url=f"redis://127.0.0.1:{server.port}/0", key_prefix=key_prefix,
                              task_hub=hub_name, partitions=PARTITIONS)
        server.stop()
        await eventually(lambda: asyncio.sleep(0, app.redis_away_since is not None), timeout=5)
        await asyncio.sleep(1.5)  # several health checks while Redis is away (each must not log again)
        server.start()
        await eventually(lambda: asyncio.sleep(0, app.redis_away_since is None), timeout=15)
    lines = [r.getMessage() for r in caplog.records if r.name == "scheduler.app"]
    away = [line for line in lines if line.startswith("Redis unreachable")]
    back = [line for line in lines if line.startswith("Redis reachable again after")]
    assert len(away) == 1 and len(back) == 1, lines
    assert float(back[0].split("after ")[1].split(" s")[0]) >= 1.5


async def test_with_replica_acks_a_write_waits_for_a_replica_and_says_when_none_has_it(start_app, key_prefix,
                                                                                     hub_name):
    with redis_sentinels(replicas=1) as topology:
        app = await start_app(redis_sentinels=topology.sentinel_addresses, redis_sentinel_master=topology.master,
                              redis_min_replica_acks=1, redis_replica_ack_timeout_ms=3000, key_prefix=key_prefix,
                              task_hub=hub_name, partitions=PARTITIONS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="replicated", name="O"), timeout=5)
            replica = next(port for port in topology.servers if port != topology.primary_port())
            replica_client = aioredis.Redis(port=replica)
            hub = await app.store.ensure_hub(hub_name)
            # acknowledged means on the replica already
            assert await replica_client.exists(hub.for_instance("replicated").instance("replicated")) == 1
            await replica_client.aclose()

            topology.servers[replica].kill()
            message = await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="alone", name="O"),
                                                         timeout=10), grpc.StatusCode.UNAVAILABLE)
            assert "only 0 of 1 replica(s) acknowledged" in message and "may have been applied" in message
            assert "nothing was written" not in message
            # it was applied on the primary: a read finds it
            reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId="alone"), timeout=5)
            assert reply.exists


async def test_sentinels_and_data_each_with_their_own_password(start_app, key_prefix, hub_name, tmp_path):
    with redis_sentinels(replicas=1, password="data-pw", sentinel_password="sentinel-pw") as topology:
        secret = tmp_path / "sentinel-password"
        secret.write_text("sentinel-pw\n")
        common = dict(redis_sentinels=topology.sentinel_addresses, redis_sentinel_master=topology.master,
                      key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
        app = await start_app(redis_url="redis://:data-pw@unused-host:1/0", redis_sentinel_password_file=str(secret),
                              **common)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="authed", name="O"), timeout=5)
            assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="authed"), timeout=5)).exists

        wrong = await start_app(redis_url="redis://:data-pw@unused-host:1/0", redis_sentinel_password="wrong",
                                **common)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{wrong.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            message = await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="refused", name="O"),
                                                         timeout=10), grpc.StatusCode.UNAVAILABLE)
            assert "No master found" in message and "wrong" not in message
