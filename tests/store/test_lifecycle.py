"""Store.raise_event, terminate_instance, suspend_instance and resume_instance: exact Redis contents."""
from __future__ import annotations

import asyncio

import pytest

from scheduler import errors
from scheduler.engine import events as make
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.store import Store
from scheduler.store.scripts import Code

from store_helpers import eventually, ids_in_distinct_partitions, new, prefix_keys, published

FUTURE = 60_000  # ms ahead: a scheduled start that stays on the due set for the whole test


async def snapshot(redis, prefix: str) -> dict[str, bytes]:
    return {k: await redis.dump(k) for k in await prefix_keys(redis, prefix)}


async def inbox(redis, pk, iid: str) -> list[bytes]:
    return await redis.lrange(pk.inbox(iid), 0, -1)


def parsed(raw: bytes) -> pb.HistoryEvent:
    return pb.HistoryEvent.FromString(raw)


async def where(redis, pk, iid: str) -> tuple[float | None, float | None]:
    """(due score, ready score)."""
    return await redis.zscore(pk.due, iid), await redis.zscore(pk.ready, iid)


async def stats_of(redis, pk) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(pk.stats)).items() if int(v)}


async def scheduled(store: Store, hub, iid: str, ahead_ms: int = FUTURE) -> int:
    due = await store.server_time_ms() + ahead_ms
    await store.create_instance(hub, new(iid, due_ms=due))
    return due


async def make_running(redis, pk, iid: str) -> None:
    """What a dispatch will do (not built yet): RUNNING, out of ready."""
    await redis.hset(pk.instance(iid), "status", "RUNNING")
    await redis.hincrby(pk.stats, "PENDING", -1)
    await redis.hincrby(pk.stats, "RUNNING", 1)
    await redis.zrem(pk.ready, iid)


async def make_completed(redis, pk, iid: str) -> None:
    await redis.hset(pk.instance(iid), mapping={"status": "COMPLETED", "output": "done"})
    await redis.zrem(pk.ready, iid)
    await redis.zrem(pk.due, iid)


# -- RaiseEvent --------------------------------------------------------------------------


async def test_raise_event_to_a_scheduled_instance_stays_on_the_due_set(store: Store, hub, redis):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        due = await scheduled(store, hub, iid)
        created = int(await redis.hget(pk.instance(iid), "created_ms"))
        t0 = await store.server_time_ms()
        assert await store.raise_event(hub, iid, make.event_raised("Approve", '{"ok": true}')) == "PENDING"
        t1 = await store.server_time_ms()
        assert await where(redis, pk, iid) == (due, None)
        events = await inbox(redis, pk, iid)
        assert events[0] == f"start:{iid}".encode() and len(events) == 2
        event = parsed(events[1])
        assert (event.eventId, event.eventRaised.name, event.eventRaised.input.value) == (-1, "Approve", '{"ok": true}')
        assert abs(event.timestamp.ToMilliseconds() - t1) < 5_000
        assert created <= t0 <= int(await redis.hget(pk.instance(iid), "updated_ms")) <= t1
        assert await redis.hget(pk.instance(iid), "status") == b"PENDING"
        assert await stats_of(redis, pk) == {"PENDING": 1}


async def test_raise_event_without_input_has_no_input(store: Store, hub, redis):
    await store.create_instance(hub, new("noin"))
    await store.raise_event(hub, "noin", make.event_raised("Ping", None))
    event = parsed((await inbox(redis, hub.for_instance("noin"), "noin"))[-1])
    assert event.eventRaised.name == "Ping" and not event.eventRaised.HasField("input")


async def test_raise_event_to_a_ready_instance_keeps_its_place(store: Store, hub, redis):
    await store.create_instance(hub, new("r"))
    pk = hub.for_instance("r")
    before = await where(redis, pk, "r")
    assert before[0] is None and before[1] is not None
    await store.raise_event(hub, "r", make.event_raised("A", "1"))
    await store.raise_event(hub, "r", make.event_raised("B", "2"))
    assert await where(redis, pk, "r") == before
    names = [parsed(e).eventRaised.name for e in (await inbox(redis, pk, "r"))[1:]]
    assert names == ["A", "B"]


async def test_raise_event_makes_a_running_instance_ready(store: Store, hub, redis):
    await store.create_instance(hub, new("run"))
    pk = hub.for_instance("run")
    await make_running(redis, pk, "run")
    t0 = await store.server_time_ms()
    assert await store.raise_event(hub, "run", make.event_raised("Go", None)) == "RUNNING"
    due, ready = await where(redis, pk, "run")
    assert due is None and t0 <= ready <= await store.server_time_ms()
    await store.raise_event(hub, "run", make.event_raised("Again", None))
    assert (await where(redis, pk, "run"))[1] == ready, "ZADD NX keeps the ready-since score"
    assert await redis.hget(pk.instance("run"), "status") == b"RUNNING"


async def test_raise_event_to_a_terminal_instance_changes_nothing(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("done"))
    await make_completed(redis, hub.for_instance("done"), "done")
    before = await snapshot(redis, key_prefix)
    assert await store.raise_event(hub, "done", make.event_raised("Late", "x")) == "COMPLETED"
    assert await snapshot(redis, key_prefix) == before


# -- TerminateInstance -------------------------------------------------------------------


async def test_terminate_a_scheduled_instance_ends_it_at_once(store: Store, hub, redis):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        await scheduled(store, hub, iid)
        raised = make.event_raised("E", '"payload"')
        await store.raise_event(hub, iid, raised)
        terminated = make.execution_terminated('"stopped"', True)
        async with published(redis, store.channel) as (messages, drain_until):
            t0 = await store.server_time_ms()
            notice = f"tell the parent of {iid}".encode()
            assert await store.terminate_instance(hub, iid, terminated, '"stopped"', notice) == (Code.OK, "PENDING")
            t1 = await store.server_time_ms()
            await drain_until(lambda m: f"{hub.hub} status {iid}" in m and f"{hub.hub} outbox {pk.outbox}" in m)
        assert await redis.lrange(pk.outbox, 0, -1) == [notice]
        h = await redis.hgetall(pk.instance(iid))
        assert h[b"status"] == b"TERMINATED" and h[b"output"] == b'"stopped"' and h[b"start"] == b"hist 0"
        assert t0 <= int(h[b"completed_ms"]) == int(h[b"updated_ms"]) <= t1
        assert b"prev_status" not in h and b"due_ms" not in h
        assert await where(redis, pk, iid) == (None, None)
        assert not await redis.exists(pk.inbox(iid))
        history = await redis.lrange(pk.history(iid), 0, -1)
        assert history[:2] == [f"start:{iid}".encode(), raised]
        last = parsed(history[2])
        assert len(history) == 3 and last.eventId == -1
        assert (last.executionTerminated.input.value, last.executionTerminated.recurse) == ('"stopped"', True)
        assert await stats_of(redis, pk) == {"TERMINATED": 1}
        got = await store.get_instance(hub, iid)
        assert got["start_event"] == f"start:{iid}".encode(), "the start event is still found (in the history)"


async def test_terminate_a_ready_instance_without_output(store: Store, hub, redis):
    await store.create_instance(hub, new("t"))
    pk = hub.for_instance("t")
    await store.terminate_instance(hub, "t", make.execution_terminated(None, False), None)
    h = await redis.hgetall(pk.instance("t"))
    assert h[b"status"] == b"TERMINATED" and b"output" not in h
    assert await where(redis, pk, "t") == (None, None)
    last = parsed((await redis.lrange(pk.history("t"), 0, -1))[-1])
    assert not last.executionTerminated.HasField("input") and not last.executionTerminated.recurse


async def test_terminate_a_terminal_instance_changes_nothing(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("twice"))
    await store.terminate_instance(hub, "twice", make.execution_terminated("first", False), "first")
    await store.create_instance(hub, new("completed"))
    await make_completed(redis, hub.for_instance("completed"), "completed")
    before = await snapshot(redis, key_prefix)
    assert await store.terminate_instance(hub, "twice", make.execution_terminated("2nd", False), "2nd") \
        == (Code.OK, "TERMINATED")
    assert await store.terminate_instance(hub, "completed", make.execution_terminated("x", False), "x") \
        == (Code.OK, "COMPLETED")
    assert await snapshot(redis, key_prefix) == before


async def test_terminate_a_running_instance_queues_the_event(store: Store, hub, redis):
    await store.create_instance(hub, new("run"))
    pk = hub.for_instance("run")
    await make_running(redis, pk, "run")
    event = make.execution_terminated("bye", False)
    assert await store.terminate_instance(hub, "run", event, "bye", notice=b"for the parent") == (Code.OK, "RUNNING")
    assert not await redis.exists(pk.outbox), "the episode that applies the event tells the parent"
    h = await redis.hgetall(pk.instance("run"))
    assert h[b"status"] == b"RUNNING" and b"output" not in h and b"completed_ms" not in h
    assert (await inbox(redis, pk, "run"))[-1] == event
    assert (await where(redis, pk, "run"))[1] is not None
    assert not await redis.exists(pk.history("run"))
    assert await stats_of(redis, pk) == {"RUNNING": 1}


async def test_terminate_a_suspended_scheduled_instance(store: Store, hub, redis):
    await scheduled(store, hub, "s")
    pk = hub.for_instance("s")
    suspended = make.execution_suspended("hold")
    await store.suspend_instance(hub, "s", suspended)
    assert await store.terminate_instance(hub, "s", make.execution_terminated(None, False), None) == (Code.OK, "SUSPENDED")
    h = await redis.hgetall(pk.instance("s"))
    assert h[b"status"] == b"TERMINATED" and b"prev_status" not in h and b"due_ms" not in h
    assert await where(redis, pk, "s") == (None, None)
    history = await redis.lrange(pk.history("s"), 0, -1)
    assert history[:2] == [b"start:s", suspended] and parsed(history[2]).HasField("executionTerminated")
    assert await stats_of(redis, pk) == {"TERMINATED": 1}


async def test_terminate_a_suspended_running_instance_lets_the_engine_apply_it(store: Store, hub, redis):
    await store.create_instance(hub, new("run"))
    pk = hub.for_instance("run")
    await make_running(redis, pk, "run")
    await store.suspend_instance(hub, "run", make.execution_suspended("hold"))
    assert (await where(redis, pk, "run"))[1] is None, "held: not ready while suspended"
    event = make.execution_terminated("bye", False)
    async with published(redis, store.channel) as (_, drain_until):
        assert await store.terminate_instance(hub, "run", event, "bye") == (Code.OK, "SUSPENDED")
        await drain_until(lambda m: f"{hub.hub} status run" in m)
    h = await redis.hgetall(pk.instance("run"))
    assert h[b"status"] == b"RUNNING" and b"prev_status" not in h, "dispatch resumes, for the termination"
    assert (await inbox(redis, pk, "run"))[-1] == event
    assert (await where(redis, pk, "run"))[1] is not None
    assert await stats_of(redis, pk) == {"RUNNING": 1}


async def test_a_terminated_instance_is_never_promoted(store: Store, hub, redis):
    due = await scheduled(store, hub, "gone", ahead_ms=30)
    await store.terminate_instance(hub, "gone", make.execution_terminated(None, False), None)

    async def past_due() -> bool:
        return await store.server_time_ms() > due

    await eventually(past_due)
    promotion = await store.promote_due(hub, 100)
    assert promotion.promoted_due_ms == []
    assert await where(redis, hub.for_instance("gone"), "gone") == (None, None)


# -- SuspendInstance / ResumeInstance ---------------------------------------------------


async def test_suspend_a_scheduled_instance_holds_it_past_its_due_time(store: Store, hub, redis):
    due = await scheduled(store, hub, "s", ahead_ms=30)
    pk = hub.for_instance("s")
    event = make.execution_suspended("maintenance")
    async with published(redis, store.channel) as (_, drain_until):
        assert await store.suspend_instance(hub, "s", event) == "PENDING"
        await drain_until(lambda m: f"{hub.hub} status s" in m)
    h = await redis.hgetall(pk.instance("s"))
    assert (h[b"status"], h[b"prev_status"], int(h[b"due_ms"])) == (b"SUSPENDED", b"PENDING", due)
    assert await where(redis, pk, "s") == (None, None)
    events = await inbox(redis, pk, "s")
    assert events == [b"start:s", event]
    assert parsed(event).executionSuspended.input.value == "maintenance"
    assert await stats_of(redis, pk) == {"SUSPENDED": 1}

    async def past_due() -> bool:
        return await store.server_time_ms() > due

    await eventually(past_due)
    assert (await store.promote_due(hub, 100)).promoted_due_ms == []
    assert await where(redis, pk, "s") == (None, None)

    # The due time has passed while suspended: resume makes it ready at once.
    resumed = make.execution_resumed("back")
    t0 = await store.server_time_ms()
    assert await store.resume_instance(hub, "s", resumed) == "SUSPENDED"
    h = await redis.hgetall(pk.instance("s"))
    assert h[b"status"] == b"PENDING" and b"prev_status" not in h and b"due_ms" not in h
    due_score, ready = await where(redis, pk, "s")
    assert due_score is None and t0 <= ready <= await store.server_time_ms()
    assert await inbox(redis, pk, "s") == [b"start:s", event, resumed]
    assert await stats_of(redis, pk) == {"PENDING": 1}


async def test_resume_before_the_due_time_goes_back_to_the_due_set(store: Store, hub, redis):
    due = await scheduled(store, hub, "s")
    pk = hub.for_instance("s")
    await store.suspend_instance(hub, "s", make.execution_suspended(None))
    async with published(redis, store.channel) as (messages, drain_until):
        await store.resume_instance(hub, "s", make.execution_resumed(None))
        # Wait for the wake-up itself: on a Cluster the suspend's status message, published on
        # another node before we subscribed, may still arrive after the subscription.
        await drain_until(lambda m: f"{hub.hub} due {due} {pk.due}" in m)  # fails at its deadline if never published
    assert await where(redis, pk, "s") == (due, None)
    assert await redis.hget(pk.instance("s"), "status") == b"PENDING"
    assert await stats_of(redis, pk) == {"PENDING": 1}


async def test_resume_behind_an_earlier_entry_publishes_no_due_wake_up(store: Store, hub, redis):
    pk = hub.for_instance("late")
    first = next(i for i in (f"early-{n}" for n in range(1000)) if hub.for_instance(i) == pk)
    await scheduled(store, hub, first, ahead_ms=FUTURE // 2)
    due = await scheduled(store, hub, "late")
    await store.suspend_instance(hub, "late", make.execution_suspended(None))
    async with published(redis, store.channel) as (messages, drain_until):
        await store.resume_instance(hub, "late", make.execution_resumed(None))
        await drain_until(lambda m: f"{hub.hub} status late" in m)
    assert not [m for m in messages if " due " in m]
    assert await where(redis, pk, "late") == (due, None)


async def test_suspend_and_resume_a_ready_instance(store: Store, hub, redis):
    await store.create_instance(hub, new("r"))
    pk = hub.for_instance("r")
    await store.suspend_instance(hub, "r", make.execution_suspended(None))
    h = await redis.hgetall(pk.instance("r"))
    assert h[b"status"] == b"SUSPENDED" and b"due_ms" not in h
    assert await where(redis, pk, "r") == (None, None)
    # An event raised while suspended waits in the inbox; the instance is not made ready.
    await store.raise_event(hub, "r", make.event_raised("While", None))
    assert await where(redis, pk, "r") == (None, None)
    await store.resume_instance(hub, "r", make.execution_resumed(None))
    assert (await where(redis, pk, "r"))[1] is not None
    kinds = [parsed(e).WhichOneof("eventType") for e in (await inbox(redis, pk, "r"))[1:]]
    assert kinds == ["executionSuspended", "eventRaised", "executionResumed"]


async def test_suspend_and_resume_a_running_instance(store: Store, hub, redis):
    await store.create_instance(hub, new("run"))
    pk = hub.for_instance("run")
    await make_running(redis, pk, "run")
    await redis.zadd(pk.ready, {"run": 1})
    assert await store.suspend_instance(hub, "run", make.execution_suspended(None)) == "RUNNING"
    assert await redis.hget(pk.instance("run"), "prev_status") == b"RUNNING"
    assert await where(redis, pk, "run") == (None, None)
    assert await stats_of(redis, pk) == {"SUSPENDED": 1}
    await store.resume_instance(hub, "run", make.execution_resumed(None))
    assert await redis.hget(pk.instance("run"), "status") == b"RUNNING"
    assert (await where(redis, pk, "run"))[1] is not None, "the engine must see the resume event"
    assert await stats_of(redis, pk) == {"RUNNING": 1}


@pytest.mark.parametrize("setup", ["suspended", "completed", "terminated"])
async def test_suspend_is_a_no_op_when_suspended_or_terminal(store: Store, hub, redis, key_prefix, setup):
    await scheduled(store, hub, "x")
    pk = hub.for_instance("x")
    if setup == "suspended":
        await store.suspend_instance(hub, "x", make.execution_suspended("first"))
    elif setup == "completed":
        await make_completed(redis, pk, "x")
    else:
        await store.terminate_instance(hub, "x", make.execution_terminated(None, False), None)
    before = await snapshot(redis, key_prefix)
    assert await store.suspend_instance(hub, "x", make.execution_suspended("again")) == setup.upper()
    assert await snapshot(redis, key_prefix) == before


@pytest.mark.parametrize("setup", ["scheduled", "ready", "running", "completed", "terminated"])
async def test_resume_is_a_no_op_unless_suspended(store: Store, hub, redis, key_prefix, setup):
    if setup == "scheduled":
        await scheduled(store, hub, "x")
    else:
        await store.create_instance(hub, new("x"))
    pk = hub.for_instance("x")
    if setup == "running":
        await make_running(redis, pk, "x")
    elif setup == "completed":
        await make_completed(redis, pk, "x")
    elif setup == "terminated":
        await store.terminate_instance(hub, "x", make.execution_terminated(None, False), None)
    status = (await redis.hget(pk.instance("x"), "status")).decode()
    before = await snapshot(redis, key_prefix)
    assert await store.resume_instance(hub, "x", make.execution_resumed(None)) == status
    assert await snapshot(redis, key_prefix) == before


@pytest.mark.parametrize("op", ["raise_event", "terminate_instance", "suspend_instance", "resume_instance"])
async def test_unknown_instance_is_not_found_and_nothing_is_written(store: Store, hub, redis, key_prefix, op):
    await store.create_instance(hub, new("other"))
    before = await snapshot(redis, key_prefix)
    args = (b"event", None) if op == "terminate_instance" else (b"event",)
    with pytest.raises(errors.InstanceNotFound) as e:
        await getattr(store, op)(hub, "missing", *args)
    assert "'missing' was not found" in str(e.value)
    assert await snapshot(redis, key_prefix) == before


async def test_concurrent_suspends_count_once(store: Store, hub, redis):
    await scheduled(store, hub, "c")
    pk = hub.for_instance("c")
    results = await asyncio.gather(*[store.suspend_instance(hub, "c", make.execution_suspended(str(i)))
                                     for i in range(5)])
    assert sorted(results) == ["PENDING"] + ["SUSPENDED"] * 4
    assert await stats_of(redis, pk) == {"SUSPENDED": 1}
    assert len(await inbox(redis, pk, "c")) == 2
