"""A caller that goes away (cancels its stream, gives up on a wait) is no error of the server: at most one
INFO line, no traceback (grpc's own logger included)."""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.api import servicer as servicer_module
from server_helpers import PARTITIONS, eventually

ROUNDS = 40  # each round races a write or an abort against the caller leaving; the old code logged ~1 in 5


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                           health_ping_seconds=0.05)


def loud(caplog) -> list[logging.LogRecord]:
    """What was logged above INFO, or with a traceback, by the server or grpc."""
    return [r for r in caplog.records if r.name.startswith(("scheduler", "grpc"))
            and (r.levelno > logging.INFO or r.exc_info)]


async def test_cancelled_work_streams_are_not_logged_as_errors(app, stub, caplog):
    caplog.set_level(logging.INFO)
    for i in range(ROUNDS):  # work the streams write, besides their health pings
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId=f"gone-{i}", name="Orch"))
    for i in range(ROUNDS):
        call = stub.GetWorkItems(pb.GetWorkItemsRequest())
        await call.read()
        await asyncio.sleep(0.005 * (i % 5))  # cancelled at various points of the stream's writes
        call.cancel()
    await eventually(lambda: _no_streams(app))
    assert loud(caplog) == []


async def test_waits_given_up_by_their_callers_are_not_logged_as_errors(app, stub, caplog, monkeypatch):
    # the server answers DEADLINE_EXCEEDED just as the caller's deadline passes: the caller is gone meanwhile
    monkeypatch.setattr(servicer_module, "WAIT_DEADLINE_MARGIN", 0.0)
    caplog.set_level(logging.INFO)
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="waited", name="Orch"))
    for _ in range(ROUNDS):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="waited"), timeout=0.05)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="waited"))
    await eventually(lambda: _watched(app, "waited"))
    call.cancel()  # a caller without a deadline that gives up
    await eventually(lambda: _not_watched(app, "waited"))
    assert loud(caplog) == []


async def _no_streams(app) -> bool:
    return not app.engine.dispatcher.all_streams()


async def _watched(app, iid: str) -> bool:
    return app.engine.waiters.watched(app.config.task_hub, iid)


async def _not_watched(app, iid: str) -> bool:
    return not await _watched(app, iid)
