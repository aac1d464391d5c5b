"""What the service promises when replicas race and Redis misbehaves: a hub deleted while another
replica writes leaves nothing half-done, UNAVAILABLE means "not written", connections stay bounded
however many hubs there are, and finished instances go once retention has passed."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import redis.asyncio as aioredis

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.engine import waiters as waiters_module
from scheduler.store import keys
from server_helpers import PARTITIONS, eventually, own_redis_server, prefix_keys
from test_work_items import done, next_work


def hub_meta(hub: str) -> tuple[tuple[str, str]]:
    return (("taskhub", hub),)


async def keep_starting(stub, stop: asyncio.Event, acked: list, stem: str) -> None:
    """Start instances one after another until told to stop; records (id, when acknowledged)."""
    n = 0
    while not stop.is_set():
        iid = f"{stem}-{n}"
        n += 1
        try:
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"), timeout=10)
            acked.append((iid, time.monotonic()))
        except grpc.aio.AioRpcError as exc:  # the hub being deleted: try the next one
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()


async def test_a_hub_deleted_while_another_replica_keeps_starting_is_left_whole(start_app, redis_url, key_prefix,
                                                                              hub_name, redis):
    config = dict(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    writer, deleter = await start_app(**config), await start_app(**config)
    hub = keys.HubKeys(key_prefix, hub_name, PARTITIONS)
    async with redis.pipeline(transaction=False) as pipe:  # a big hub: its deletion takes a while
        for i in range(40_000):
            pipe.set(hub.for_instance(f"old-{i}").history(f"old-{i}"), "x")
        await pipe.execute()
    stop, acked = asyncio.Event(), []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{writer.port}") as w, \
            grpc.aio.insecure_channel(f"127.0.0.1:{deleter.port}") as d:
        writers = [asyncio.ensure_future(keep_starting(pb_grpc.TaskHubSidecarServiceStub(w), stop, acked, f"w{i}"))
                   for i in range(4)]
        await eventually(lambda: asyncio.sleep(0, len(acked) >= 200), timeout=20)
        await pb_grpc.TaskHubSidecarServiceStub(d).DeleteTaskHub(pb.DeleteTaskHubRequest())
        deleted_at = time.monotonic()
        await eventually(lambda: asyncio.sleep(0, sum(t > deleted_at for _, t in acked) >= 200), timeout=20)
        stop.set()
        await asyncio.gather(*writers)

    present = set()
    for key in await prefix_keys(redis, key_prefix):
        if hub.owns(key) and ":inst:" in key:
            present.add(key.split(":inst:", 1)[1])
    acked_after = {iid for iid, t in acked if t > deleted_at}
    assert acked_after <= present, "an instance acknowledged after the deletion is missing"
    for pk in hub.all_partitions():  # what is left is whole: every key belongs to an instance that is whole
        ids = {iid for iid in present if hub.for_instance(iid) == pk}
        assert {m.decode().split("|", 2)[2] for m in await redis.zrange(pk.by_status, 0, -1)} == ids
        assert {m.decode() for m in await redis.zrange(pk.ready, 0, -1)} == ids
        stats = {k.decode(): int(v) for k, v in (await redis.hgetall(pk.stats)).items() if int(v)}
        assert stats == ({"PENDING": len(ids)} if ids else {})
        for iid in ids:
            assert await redis.llen(pk.inbox(iid)) == 1
    for key in await prefix_keys(redis, key_prefix):
        if hub.owns(key):
            tail = key.split("}:", 1)[1]
            if tail.startswith(("inst:", "inbox:", "hist:")):
                assert tail.split(":", 1)[1] in present, f"orphan key {key}"


async def test_unavailable_means_nothing_was_written_while_redis_is_stopped(start_app, key_prefix, hub_name):
    """SIGSTOP Redis while StartInstance calls go on: a call answered UNAVAILABLE was not applied, even
    after Redis resumes and runs what it had buffered; a call whose reply was lost says so."""
    with own_redis_server() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
        outcomes: dict[str, grpc.StatusCode] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId="warm", name="Orch"))

            async def start(iid: str) -> None:
                try:
                    await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"), timeout=20)
                    outcomes[iid] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    outcomes[iid] = exc.code()

            pid = server.process.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                calls = []
                deadline = time.monotonic() + 8
                n = 0
                while time.monotonic() < deadline:  # calls keep coming while Redis is stopped
                    calls.append(asyncio.ensure_future(start(f"s-{n}")))
                    n += 1
                    await asyncio.sleep(0.1)
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.gather(*calls)
            await eventually(lambda: _answers(stub), timeout=15)
        codes = set(outcomes.values())
        assert grpc.StatusCode.UNAVAILABLE in codes and codes <= {
            grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        client = aioredis.Redis.from_url(url)
        try:
            hub = keys.HubKeys(key_prefix, hub_name, PARTITIONS)
            await asyncio.sleep(0)
            for iid, code in outcomes.items():
                written = await client.exists(hub.for_instance(iid).instance(iid))
                if code is grpc.StatusCode.UNAVAILABLE:
                    assert not written, f"{iid} was answered UNAVAILABLE but was written"
                elif code is grpc.StatusCode.OK:
                    assert written
        finally:
            await client.aclose()


async def _answers(stub) -> bool:
    try:
        await stub.GetInstance(pb.GetInstanceRequest(instanceId="warm"), timeout=2)
        return True
    except grpc.aio.AioRpcError:
        return False


async def test_connections_stay_bounded_however_many_hubs(start_app, key_prefix, hub_name):
    with own_redis_server() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        app = await start_app(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                              redis_max_connections=6)
        client = aioredis.Redis.from_url(url)
        peak = 0
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, len(await client.client_list()) - 1)  # all but this test's own
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = pb_grpc.TaskHubSidecarServiceStub(channel)
                hubs = [f"{hub_name}-{i}" for i in range(45)]
                for round_ in range(3):
                    replies = await asyncio.gather(*(
                        stub.StartInstance(pb.CreateInstanceRequest(instanceId=f"i{round_}-{j}", name="Orch"),
                                           metadata=hub_meta(h), timeout=30)
                        for h in hubs for j in range(3)), return_exceptions=True)
                    replies += await asyncio.gather(*(  # queries take a connection each while they read
                        stub.QueryInstances(pb.QueryInstancesRequest(query=pb.InstanceQuery(maxInstanceCount=5)),
                                            metadata=hub_meta(h), timeout=30)
                        for h in hubs), return_exceptions=True)
                    assert [r for r in replies if isinstance(r, Exception)] == []
                await eventually(lambda: asyncio.sleep(0, len(app.engine.hubs.served()) >= 46), timeout=10)
                await app.sweep_leases()  # the per-hub housekeeping runs over every hub as well
                await app.sample_depths()
                await asyncio.sleep(2.5)  # the measurement window: every hub's relay and promoter run in it
        finally:
            stop.set()
            await watcher
            await client.aclose()
        # the bounded pool, the pipelined request connection and the pub/sub connection
        assert 0 < peak <= 6 + 2, f"{peak} connections to Redis for one replica"


async def test_finished_instances_go_once_their_retention_has_passed(start_app, redis_url, key_prefix, hub_name,
                                                                     redis):
    config = dict(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                  retention_seconds=0.3)
    one, two = await start_app(**config), await start_app(**config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{one.port}") as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        ended = [f"ended-{i}" for i in range(12)]
        for iid in [*ended, "alive"]:
            await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"))
        for iid in ended:  # never dispatched: a termination ends them at once
            await stub.TerminateInstance(pb.TerminateRequest(instanceId=iid))
        hub = await one.store.ensure_hub(hub_name)

        async def ended_long_enough() -> bool:
            return await one.store.server_time_ms() > max(
                [int(await redis.zscore(hub.for_instance(iid).by_completed, iid)) for iid in ended]) + 300

        await eventually(ended_long_enough)
        purged = await asyncio.gather(one.engine.retention.sweep(), two.engine.retention.sweep())
        assert sorted(purged) == [0, len(ended)], "one replica takes the turn; the other does nothing"
        for iid in ended:
            assert not (await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid))).exists
        assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="alive"))).exists
        await one.store.set_retention_seconds(hub, 0)  # the hub's own setting wins: keep everything
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="kept", name="Orch"))
        await stub.TerminateInstance(pb.TerminateRequest(instanceId="kept"))
        await redis.delete(hub.turn("retention"))
        assert await one.engine.retention.sweep() == 0
        assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="kept"))).exists


async def test_after_redis_restarts_another_replicas_waiter_is_woken_again(start_app, key_prefix, hub_name,
                                                                          monkeypatch):
    """Redis stops and starts again on its port (empty): each replica's wake-up subscription comes back
    by itself, so a completion on one replica wakes a waiter on the other through pub/sub again."""
    monkeypatch.setattr(waiters_module, "RECHECK_SECONDS", 60.0)  # only the wake-up can end the wait in time
    with own_redis_server() as server:
        config = dict(redis_url=f"redis://127.0.0.1:{server.port}/0", key_prefix=key_prefix, task_hub=hub_name,
                      partitions=PARTITIONS)
        completer, waiter = await start_app(**config), await start_app(**config)
        subscribed = {completer: 0, waiter: 0}  # subscriptions made after the restart
        for app in subscribed:
            await asyncio.wait_for(app.engine.wakeups.connected.wait(), 10)
            heard = app.engine.wakeups.route

            def route(wakeup, app=app, heard=heard):
                subscribed[app] += wakeup.kind == "subscribed"
                heard(wakeup)
            monkeypatch.setattr(app.engine.wakeups, "route", route)
        server.stop()
        server.start()
        await eventually(lambda: asyncio.sleep(0, min(subscribed.values()) >= 1), timeout=30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{completer.port}") as c, \
                grpc.aio.insecure_channel(f"127.0.0.1:{waiter.port}") as w:
            here, there = pb_grpc.TaskHubSidecarServiceStub(c), pb_grpc.TaskHubSidecarServiceStub(w)
            await here.StartInstance(pb.CreateInstanceRequest(instanceId="after", name="Orch"), timeout=10)
            call = here.GetWorkItems(pb.GetWorkItemsRequest())
            episode = await next_work(call)
            waiting = asyncio.ensure_future(there.WaitForInstanceCompletion(
                pb.GetInstanceRequest(instanceId="after"), timeout=30))
            await eventually(lambda: asyncio.sleep(0, any(i == "after" for _, i in waiter.engine.waiters._waiting)))  # noqa: SLF001
            await here.CompleteOrchestratorTask(done(episode.completionToken, '"ok"'), timeout=10)
            reply = await asyncio.wait_for(waiting, 10)
            assert reply.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
            call.cancel()
