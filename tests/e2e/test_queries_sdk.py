"""Queries, purges and history through the official SDK client against a server subprocess.

Terminal instances are made with plain redis-py, as a worker will leave them (no workers exist yet).
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import redis
from durabletask import client, history
from durabletask.internal import orchestrator_service_pb2 as pb

from scheduler.store.keys import HubKeys

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus


@pytest.fixture
def sdk(server) -> Iterator[client.TaskHubGrpcClient]:
    c = client.TaskHubGrpcClient(host_address=server.address)
    yield c
    c.close()


@pytest.fixture
def writer(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test's own, to play the worker's part in Redis."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def finish(r: redis.Redis, hub: HubKeys, iid: str, status: str = "COMPLETED",
           completed: datetime | None = None) -> None:
    pk = hub.for_instance(iid)
    completed_ms = int((completed or datetime.now(timezone.utc)).timestamp() * 1000)
    old = r.hget(pk.instance(iid), "status").decode()
    created = int(r.hget(pk.instance(iid), "created_ms"))
    r.hset(pk.instance(iid), mapping={"status": status, "completed_ms": completed_ms})
    r.zrem(pk.by_status, f"{old}|{created:016d}|{iid}")  # the status index, as lua/prelude.lua keeps it
    r.zadd(pk.by_status, {f"{status}|{created:016d}|{iid}": 0})
    r.hincrby(pk.stats, old, -1)
    r.hincrby(pk.stats, status, 1)
    r.zrem(pk.ready, iid)


def creation_order(r: redis.Redis, hub: HubKeys) -> list[str]:
    entries = []
    for pk in hub.all_partitions():
        for member in r.zrange(pk.by_status, 0, -1):  # "<status>|<created ms>|<id>", as lua/prelude.lua writes it
            status, created, iid = member.decode().split("|", 2)
            if status != "*":
                entries.append((int(created), iid))
    return [iid for _, iid in sorted(entries)]


def test_get_all_states_follows_tokens_across_partitions(sdk, rds, hub_keys):
    ids = [f"q-{i:02d}" for i in range(11)]
    for iid in ids:
        sdk.schedule_new_orchestration("Orch", input={"n": iid}, instance_id=iid)
    sdk.schedule_new_orchestration("Orch", instance_id="other-1")
    states = sdk.get_all_orchestration_states(client.OrchestrationQuery(max_instance_count=3))
    assert [s.instance_id for s in states] == creation_order(rds, hub_keys)
    assert len(states) == 12 and all(s.serialized_input is None for s in states)
    assert all(s.runtime_status == Status.PENDING for s in states)

    q = client.OrchestrationQuery(instance_id_prefix="q-", max_instance_count=4, fetch_inputs_and_outputs=True)
    with_inputs = sdk.get_all_orchestration_states(q)
    assert sorted(s.instance_id for s in with_inputs) == ids
    assert {s.instance_id: s.get_input() for s in with_inputs} == {iid: {"n": iid} for iid in ids}


def test_get_all_states_filters_by_status_and_creation_time(sdk, writer, hub_keys):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    for iid in ("s-1", "s-2", "s-3"):
        sdk.schedule_new_orchestration("Orch", instance_id=iid)
    finish(writer, hub_keys, "s-2", "FAILED")
    failed = sdk.get_all_orchestration_states(client.OrchestrationQuery(runtime_status=[Status.FAILED]))
    assert [(s.instance_id, s.runtime_status) for s in failed] == [("s-2", Status.FAILED)]
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert sdk.get_all_orchestration_states(client.OrchestrationQuery(created_time_from=later)) == []
    window = client.OrchestrationQuery(created_time_from=before, created_time_to=later)
    assert sorted(s.instance_id for s in sdk.get_all_orchestration_states(window)) == ["s-1", "s-2", "s-3"]


def test_list_instance_ids_pages_terminal_instances(sdk, writer, hub_keys):
    ids = [f"l-{i}" for i in range(7)]
    for iid in ids:
        sdk.schedule_new_orchestration("Orch", instance_id=iid)
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for n, iid in enumerate(ids[:5]):
        finish(writer, hub_keys, iid, "TERMINATED" if n == 4 else "COMPLETED", t0 + timedelta(seconds=n))
    got, token = [], None
    while True:
        page = sdk.list_instance_ids(page_size=2, continuation_token=token)
        got += page.items
        token = page.continuation_token
        if token is None:
            break
        assert len(page.items) == 2
    assert sorted(got) == ids[:5] and len(got) == 5
    assert got == [i for i in creation_order(writer, hub_keys) if i in ids[:5]]
    only = sdk.list_instance_ids(runtime_status=[Status.TERMINATED])
    assert only.items == ["l-4"] and only.continuation_token is None
    ranged = sdk.list_instance_ids(completed_time_from=t0 + timedelta(seconds=1),
                                   completed_time_to=t0 + timedelta(seconds=3))
    assert sorted(ranged.items) == ["l-1", "l-2"]
    with pytest.raises(grpc.RpcError) as e:
        sdk.list_instance_ids(continuation_token="garbage")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_purge_skips_a_running_instance_and_removes_a_finished_one(sdk, writer, hub_keys, probe):
    sdk.schedule_new_orchestration("Orch", instance_id="open")
    sdk.schedule_new_orchestration("Orch", instance_id="closed")
    finish(writer, hub_keys, "closed")
    skipped = sdk.purge_orchestration("open")
    assert (skipped.deleted_instance_count, skipped.is_complete) == (0, True)
    assert sdk.get_orchestration_state("open").runtime_status == Status.PENDING
    purged = sdk.purge_orchestration("closed")
    assert purged.deleted_instance_count == 1
    assert sdk.get_orchestration_state("closed") is None
    assert probe.status_counts() == {"PENDING": 1}


def test_purge_by_filter(sdk, writer, hub_keys):
    for iid in ("a", "b", "c", "d"):
        sdk.schedule_new_orchestration("Orch", instance_id=iid)
    finish(writer, hub_keys, "a", "COMPLETED")
    finish(writer, hub_keys, "b", "FAILED")
    finish(writer, hub_keys, "c", "COMPLETED")
    result = sdk.purge_orchestrations_by(runtime_status=[Status.COMPLETED, Status.PENDING],
                                         timeout=timedelta(seconds=30))
    assert (result.deleted_instance_count, result.is_complete) == (2, True)
    assert sorted(s.instance_id for s in sdk.get_all_orchestration_states()) == ["b", "d"]


def test_history(sdk, writer, hub_keys):
    with pytest.raises(grpc.RpcError) as e:
        sdk.get_orchestration_history("nobody")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    sdk.schedule_new_orchestration("Orch", instance_id="h")
    assert sdk.get_orchestration_history("h") == []  # never dispatched: its events wait in the inbox
    events = [pb.HistoryEvent(eventId=i, timerFired=pb.TimerFiredEvent(timerId=i)) for i in range(130)]
    writer.rpush(hub_keys.for_instance("h").history("h"), *(ev.SerializeToString() for ev in events))
    got = sdk.get_orchestration_history("h")
    assert len(got) == 130
    assert all(isinstance(ev, history.TimerFiredEvent) for ev in got)
    assert [ev.timer_id for ev in got] == list(range(130))
