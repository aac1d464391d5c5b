"""What an operator relies on: readiness and liveness probes, a graceful drain, metrics and JSON logs."""
from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler import logs
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.protocol import ORCHESTRATION
from scheduler.store.keys import lease_member
from scheduler.testing import free_port
from server_helpers import PARTITIONS, eventually, next_work, own_redis_server, rpc_error

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def status(health, service: str) -> int:
    return (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_readiness_follows_redis_and_liveness_does_not(start_app, key_prefix, hub_name):
    with own_redis_server() as server:
        app = await start_app(redis_url=f"redis://127.0.0.1:{server.port}/0", key_prefix=key_prefix,
                              task_hub=hub_name, partitions=PARTITIONS)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("readiness", "liveness", ""):
                assert await status(health, service) == SERVING
            server.stop()

            async def not_ready() -> bool:
                return await status(health, "readiness") == NOT_SERVING

            await eventually(not_ready, timeout=10)
            assert await status(health, "") == NOT_SERVING
            assert await status(health, "liveness") == SERVING  # a Redis outage must not restart the pod
            server.start()

            async def ready() -> bool:
                return await status(health, "readiness") == SERVING

            await eventually(ready, timeout=15)


async def test_a_health_check_under_way_when_the_drain_starts_does_not_make_the_replica_ready_again(
        start_app, redis_url, key_prefix, hub_name):
    """Found by the rolling-restart test under load: a health check that had read Redis before stop() set
    NOT_SERVING wrote SERVING after it, and the draining replica stayed ready."""
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    answered, proceed = asyncio.Event(), asyncio.Event()
    ping = app.store.ping

    async def slow_ping():
        await ping()
        answered.set()
        await proceed.wait()  # Redis answered; the check has not written readiness yet

    app.store.ping = slow_ping
    drain, drained = app.engine.dispatcher.drain, asyncio.Event()

    async def draining(grace):  # handed-out work still running: the drain is under way
        await drained.wait()
        await drain(grace)

    app.engine.dispatcher.drain = draining
    check = asyncio.create_task(app._check_health())
    await answered.wait()
    stopping = asyncio.create_task(app.stop(grace=0))
    await eventually(lambda: asyncio.sleep(0, app.draining), timeout=5)
    proceed.set()
    await check
    for service in ("readiness", ""):
        reply = await app.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        assert reply.status == NOT_SERVING, service
    drained.set()
    await stopping


def done(token: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)


async def test_a_drain_takes_no_new_work_lets_handed_out_work_finish_then_hands_back(start_app, redis_url,
                                                                                      key_prefix, hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for iid in ("held", "kept"):
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"))
        call = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=1))
        first = await next_work(call)
        held = first.orchestratorRequest.instanceId
        stopping = asyncio.ensure_future(app.stop(grace=30))

        async def draining() -> bool:
            return await status(health, "readiness") == NOT_SERVING

        await eventually(draining)
        assert await status(health, "liveness") == SERVING
        message = await rpc_error(stub.GetWorkItems(pb.GetWorkItemsRequest()).read(), grpc.StatusCode.UNAVAILABLE)
        assert "shutting down" in message
        await stub.CompleteOrchestratorTask(done(first.completionToken))  # the work handed out may finish
        await asyncio.wait_for(stopping, 10)  # nothing held any more: the drain ends before its grace
        reply = await asyncio.wait_for(call.read(), 5)  # the stream ended
        assert reply is grpc.aio.EOF
    assert held in ("held", "kept")
    other = {"held": "kept", "kept": "held"}[held]
    hub = app.store.cached_hub(hub_name) or await app.store.find_hub(hub_name)
    redis = app.store.redis
    assert await redis.hget(hub.for_instance(held).instance(held), "status") == b"COMPLETED"
    assert await redis.hget(hub.for_instance(other).instance(other), "lease") is None  # never handed out


async def test_a_drain_past_its_grace_hands_the_work_back(start_app, redis_url, key_prefix, hub_name, redis):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="slow", name="Orch"))
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await next_work(call)
        await asyncio.wait_for(app.stop(grace=0.3), 10)  # the worker never completes it
    hub = await app.store.find_hub(hub_name) if app.store.cached_hub(hub_name) is None else \
        app.store.cached_hub(hub_name)
    pk = hub.for_instance("slow")
    # handed back at once, not after the lease (its token stays good until the next claim: a late completion applies)
    assert await redis.zscore(pk.leases, lease_member(ORCHESTRATION, "slow")) is None
    assert await redis.zscore(pk.ready, "slow") is not None


async def test_metrics_count_calls_by_status_and_show_streams(start_app, redis_url, key_prefix, hub_name):
    port = free_port()
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          metrics_port=port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="m1", name="Orch"))
        await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="m1", name="Orch")),
                        grpc.StatusCode.ALREADY_EXISTS)
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await next_work(call)
        await app.sample_depths()
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
        call.cancel()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['dt_rpc_requests_total{code="OK",method="StartInstance"}'] >= 1
    assert samples['dt_rpc_requests_total{code="ALREADY_EXISTS",method="StartInstance"}'] >= 1
    assert samples['dt_rpc_duration_seconds_count{method="StartInstance"}'] >= 2
    assert samples["dt_work_streams"] >= 1 and samples["dt_work_items_held"] >= 1
    assert f'dt_outbox_messages{{hub="{hub_name}"}}' in samples
    assert any(name.startswith("dt_redis_errors_total") for name in text.splitlines() if not name.startswith("#")) \
        or "# HELP dt_redis_errors_total" in text


def test_json_logs_carry_the_replica_hub_and_instance():
    formatter = logs.JsonFormatter("replica-7")
    record = logging.LogRecord("scheduler.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    token_hub, token_instance = logs.hub.set("orders"), logs.instance.set("order-42")
    try:
        entry = json.loads(formatter.format(record))
    finally:
        logs.hub.reset(token_hub)
        logs.instance.reset(token_instance)
    assert entry["message"] == "hello there" and entry["replica"] == "replica-7"
    assert (entry["hub"], entry["instance"], entry["level"], entry["logger"]) == ("orders", "order-42", "INFO",
                                                                                  "scheduler.x")
    plain = json.loads(formatter.format(record))
    assert "hub" not in plain and "instance" not in plain and "process" not in plain
    assert json.loads(logs.JsonFormatter("replica-7", process=2).format(record))["process"] == 2


async def test_json_logs_of_a_call_name_its_hub_and_instance(start_app, redis_url, key_prefix, hub_name):
    """What a call logs names the task hub and the instance it is about (the interceptor sets them)."""
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub="default", partitions=PARTITIONS,
                          log_format="json")
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.setFormatter(logs.JsonFormatter("replica-7"))
    handler.emit = lambda record: lines.append(handler.format(record))
    logger = logging.getLogger("scheduler.api.status")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="seen", name="x"),
                                     metadata=(("taskhub", hub_name),), timeout=10)
            await rpc_error(stub.RaiseEvent(pb.RaiseEventRequest(instanceId="nobody", name="e"),
                                            metadata=(("taskhub", hub_name),), timeout=10), grpc.StatusCode.NOT_FOUND)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    entries = [json.loads(line) for line in lines]
    assert [(e["hub"], e["instance"]) for e in entries if "RaiseEvent rejected" in e["message"]] == [
        (hub_name, "nobody")]

