"""Flow control of GetWorkItems over a real port: what a stream may hold, and what a worker that stops reading
(or holds work forever) gets to keep."""
from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.protocol import ORCHESTRATION
from scheduler.store.keys import lease_member
from server_helpers import PARTITIONS, eventually


def done(token: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value='"ok"')))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)


class Reader:
    """A well-behaved worker: takes every orchestration work item off its stream and completes it at once."""

    def __init__(self, stub, **request) -> None:
        self.stub = stub
        self.call = stub.GetWorkItems(pb.GetWorkItemsRequest(**request))
        self.completed: list[str] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            item = await self.call.read()
            if item is grpc.aio.EOF:
                return
            if item.HasField("orchestratorRequest"):
                await self.stub.CompleteOrchestratorTask(done(item.completionToken))
                self.completed.append(item.orchestratorRequest.instanceId)

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.task


async def new_stream(app, hub_name: str, open_call):
    """Open a stream with ``open_call()`` and return (the call, the server's WorkStream of it)."""
    before = set(app.engine.dispatcher.streams(hub_name))
    call = open_call()

    async def opened() -> bool:
        return len(set(app.engine.dispatcher.streams(hub_name)) - before) == 1

    await eventually(opened)
    (stream,) = set(app.engine.dispatcher.streams(hub_name)) - before
    return call, stream


async def orchestration_leases(app, hub_name: str) -> set[str]:
    """Instance ids of the orchestration leases in Redis (members "o|<id>" of the partitions' leases zsets)."""
    hub = app.store.cached_hub(hub_name)
    held = set()
    for pk in hub.all_partitions():
        held |= {m.decode()[2:] for m in await app.store.redis.zrange(pk.leases, 0, -1) if m.startswith(b"o|")}
    return held


async def status_of(stub, iid: str) -> int:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid))
    return reply.orchestrationState.orchestrationStatus


async def start(stub, ids: list[str], payload: str | None = None) -> None:
    for iid in ids:
        request = pb.CreateInstanceRequest(instanceId=iid, name="Orch")
        if payload is not None:
            request.input.value = payload
        await stub.StartInstance(request)


async def _true(value: bool) -> bool:
    return value


def own_channel(app) -> grpc.aio.Channel:
    """A channel with a connection of its own (grpc shares connections between alike channels otherwise), so
    that what one worker leaves unread does not hold up another's."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=[("grpc.use_local_subchannel_pool", 1)])


async def hog_holds_two_and_reader_gets_the_rest(app, hub_name, stub, hog_stub, ids):
    """A worker that declares 2 and never reads its stream (nor completes anything) holds 2 of ``ids``;
    a reading worker that comes later completes the rest. Returns (the hog's call, the reader, the hog's lane,
    the ids it holds)."""
    hog, hog_stream = await new_stream(app, hub_name, lambda: hog_stub.GetWorkItems(
        pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=2)))
    hog_lane = hog_stream.lanes[ORCHESTRATION]
    assert hog_lane.limit == 2
    await start(stub, ids)
    await eventually(lambda: _true(len(hog_lane.held) == 2))
    reader = Reader(stub)

    async def rest_done_two_held() -> bool:
        return len(reader.completed) == len(ids) - 2

    await eventually(rest_done_two_held, timeout=5)
    held = await orchestration_leases(app, hub_name)
    assert held == set(hog_lane.held) and len(held) == 2  # the hog's 2 leases, nothing else
    assert set(reader.completed) == set(ids) - held
    return hog, reader, hog_lane, held


async def test_a_stream_holds_what_its_worker_declares_and_held_work_comes_back_after_the_longest_hold(
        start_app, redis_url, key_prefix, hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          lease_seconds=1.0, max_work_item_seconds=1.0)
    async with own_channel(app) as hog_channel, own_channel(app) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        hog_stub = pb_grpc.TaskHubSidecarServiceStub(hog_channel)
        ids = [f"fc{n}" for n in range(6)]
        hog, reader, hog_lane, held = await hog_holds_two_and_reader_gets_the_rest(app, hub_name, stub, hog_stub,
                                                                                    ids)
        first_claims = {(iid, hog_lane.held[iid]) for iid in held}
        claimed_at = max(hog_lane.since[iid] for iid in held)
        hub = app.store.cached_hub(hub_name)

        # The hog never lets go, but a work item stays leased to one worker at most max_work_item_seconds: the
        # stream stops renewing it, its lease expires and the sweep queues it again, where it is claimed anew
        # (by either stream) or completed: the hog's first claims are over (the instance's lease field, the
        # current claim token, changes or goes).
        async def came_back() -> bool:
            assert len(hog_lane.held) <= 2
            for iid, token in first_claims:
                lease = await app.store.redis.hget(hub.for_instance(iid).instance(iid), "lease")
                if lease is not None and lease.decode() == token:
                    return False
            return True

        await eventually(came_back, timeout=10, interval=0.02)
        assert time.monotonic() - claimed_at >= 1.0, "held work came back before the longest hold"
        await reader.close()
        hog.cancel()


async def test_work_held_past_the_longest_hold_reaches_a_reading_worker(start_app, redis_url, key_prefix, hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          lease_seconds=1.0, max_work_item_seconds=1.0)
    async with own_channel(app) as hog_channel, own_channel(app) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        hog_stub = pb_grpc.TaskHubSidecarServiceStub(hog_channel)
        ids = [f"fc{n}" for n in range(6)]
        hog, reader, hog_lane, held = await hog_holds_two_and_reader_gets_the_rest(app, hub_name, stub, hog_stub,
                                                                                    ids)
        try:
            await eventually(lambda: _true(set(reader.completed) == set(ids)), timeout=20, interval=0.02)
            for iid in ids:
                assert await status_of(stub, iid) == pb.ORCHESTRATION_STATUS_COMPLETED
        finally:
            await reader.close()
            hog.cancel()


async def test_a_worker_that_finished_nothing_gets_no_more_than_it_declared_after_the_longest_hold(
        start_app, redis_url, key_prefix, hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          lease_seconds=1.0, max_work_item_seconds=1.0)
    async with own_channel(app) as hog_channel, own_channel(app) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        hog_stub = pb_grpc.TaskHubSidecarServiceStub(hog_channel)
        hog, hog_stream = await new_stream(app, hub_name, lambda: hog_stub.GetWorkItems(
            pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=2)))
        hog_lane = hog_stream.lanes[ORCHESTRATION]
        ids = [f"fc{n}" for n in range(4)]
        await start(stub, ids)
        await eventually(lambda: _true(len(hog_lane.held) == 2))
        first_claims = dict(hog_lane.held)
        hub = app.store.cached_hub(hub_name)

        async def first_claims_over() -> bool:  # past the longest hold, their leases expired and were swept
            for iid in first_claims:  # (their tokens stay good until another claim takes them)
                if await app.store.redis.zscore(hub.for_instance(iid).leases, lease_member(ORCHESTRATION, iid)):
                    return False
            return True

        try:
            await eventually(first_claims_over, timeout=10, interval=0.02)
            # The worker still has its first 2 (it completed and abandoned nothing): it gets nothing more.
            sent = []
            while True:
                try:
                    item = await asyncio.wait_for(hog.read(), 0.5)  # what is on the wire already
                except asyncio.TimeoutError:
                    break
                if item.HasField("orchestratorRequest"):
                    sent.append(item.orchestratorRequest.instanceId)
            assert len(sent) == 2, f"a worker that declared 2 and finished nothing was sent {sent}"
        finally:
            hog.cancel()


async def test_a_stream_that_declares_nothing_is_capped_by_max_stream_work_items(start_app, redis_url, key_prefix,
                                                                                 hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          max_stream_work_items=3)
    async with own_channel(app) as hog_channel, own_channel(app) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        hog_stub = pb_grpc.TaskHubSidecarServiceStub(hog_channel)
        hog, hog_stream = await new_stream(app, hub_name, lambda: hog_stub.GetWorkItems(pb.GetWorkItemsRequest()))
        hog_lane = hog_stream.lanes[ORCHESTRATION]
        assert hog_lane.limit == 3
        ids = [f"cap{n}" for n in range(10)]
        most_held = 0
        sampling = True

        async def sample() -> None:  # what the hog holds, all along
            nonlocal most_held
            while sampling:
                most_held = max(most_held, len(hog_lane.held))
                await asyncio.sleep(0.001)

        sampler = asyncio.ensure_future(sample())
        await start(stub, ids)  # queued before the reader comes: the hog may take as many as it is allowed
        await eventually(lambda: _true(len(hog_lane.held) == 3))
        reader = Reader(stub)

        async def rest_done() -> bool:
            return len(reader.completed) == 7

        await eventually(rest_done, timeout=10)
        sampling = False
        await sampler
        held = await orchestration_leases(app, hub_name)
        assert held == set(hog_lane.held) and len(held) == 3
        assert most_held == 3
        assert set(reader.completed) == set(ids) - held
        await reader.close()
        hog.cancel()


async def test_a_worker_that_takes_nothing_off_the_wire_loses_its_stream_and_its_work(start_app, redis_url,
                                                                                      key_prefix, hub_name):
    # Work items of ~200 KB: the hog's HTTP/2 windows (a few MB) fill after about 20 and the next write blocks.
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          max_stream_work_items=1000, stream_write_timeout_seconds=1.0)
    async with own_channel(app) as hog_channel, own_channel(app) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        hog_stub = pb_grpc.TaskHubSidecarServiceStub(hog_channel)
        hog, hog_stream = await new_stream(app, hub_name, lambda: hog_stub.GetWorkItems(pb.GetWorkItemsRequest()))
        hog_lane = hog_stream.lanes[ORCHESTRATION]
        ids = [f"big{n}" for n in range(40)]
        await start(stub, ids, payload="x" * 200_000)
        # It claimed some, then blocked writing one: it stops claiming, well below the 40 queued (and its limit).
        await eventually(lambda: _true(len(hog_lane.held) > 0))
        most_held = 0

        async def stream_ended() -> bool:
            nonlocal most_held
            most_held = max(most_held, len(hog_lane.held))
            return hog_stream not in app.engine.dispatcher.streams(hub_name)

        blocked_for = await eventually(stream_ended, timeout=10, interval=0.01)
        assert 0 < most_held < len(ids)
        assert blocked_for >= 0.5  # it lived until its write timed out (1 s after its last progress)
        # Its work was handed back at once (the lease is 30 s): another worker gets every item.
        assert not await orchestration_leases(app, hub_name)
        reader = Reader(stub)
        await eventually(lambda: _true(set(reader.completed) == set(ids)), timeout=10)
        await reader.close()
        # The hog learns why, once it reads what was on the wire.
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                assert await asyncio.wait_for(hog.read(), 10) is not grpc.aio.EOF
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stream-write-timeout-seconds" in ended.value.details()
