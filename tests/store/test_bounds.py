"""Bounds the store keeps whatever a client sends: far due times, full inboxes, large work items,
late writers of a deleted hub, and the completion index that retention reads."""
from __future__ import annotations

import dataclasses

import pytest

from scheduler import errors, protocol
from scheduler.engine import events as make
from scheduler.store import Store, keys
from scheduler.store.notify import parse
from scheduler.store.scripts import Code

from store_helpers import ids_in_distinct_partitions, new, published
from test_completion import running
from test_dispatch import claim, snapshot

YEAR_9000_MS = 221_845_392_000_000  # 9000-01-01T00:00:00Z: past 1e14 ms, where Lua writes "2.2e+14"


async def test_a_far_due_time_is_announced_in_digits(store: Store, hub, redis):
    pk = hub.for_instance("far")
    async with published(redis, store.channel) as (messages, drain_until):
        await store.create_instance(hub, new("far", due_ms=YEAR_9000_MS))
        await drain_until(lambda m: any(" due " in x for x in m))
    due = next(x for x in messages if " due " in x)
    assert due == f"{hub.hub} due {YEAR_9000_MS} {pk.due}"
    wakeup = parse(due.encode())
    assert (wakeup.due_ms, wakeup.queue) == (YEAR_9000_MS, ("due", keys.partition_of("far", hub.partitions)))
    assert await redis.zscore(pk.due, "far") == YEAR_9000_MS


async def test_an_inbox_takes_no_more_events_than_its_limit(store: Store, hub, redis, key_prefix):
    store.limits = dataclasses.replace(store.limits, max_inbox_events=3)
    await store.create_instance(hub, new("busy"))  # the start event is the first of three
    for n in range(2):
        assert await store.raise_event(hub, "busy", make.event_raised(f"e{n}", None)) == "PENDING"
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.InboxFull) as full:
        await store.raise_event(hub, "busy", make.event_raised("one-too-many", None))
    assert "3 pending events" in str(full.value)
    assert await snapshot(redis, key_prefix) == before


async def test_an_event_that_the_next_work_item_has_no_room_for_is_refused(store: Store, hub, redis, key_prefix):
    store.limits = dataclasses.replace(store.limits, max_work_item_bytes=1000)
    await store.create_instance(hub, new("big"))
    pk = hub.for_instance("big")
    size = int(await redis.hget(pk.instance("big"), "size"))
    fits = make.event_raised("fits", "x" * (1000 - size - 60))
    assert size + len(fits) <= 1000
    await store.raise_event(hub, "big", fits)
    assert int(await redis.hget(pk.instance("big"), "size")) == size + len(fits)
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.WorkItemTooLarge) as refused:
        await store.raise_event(hub, "big", make.event_raised("too-much", "y" * 100))
    assert "1000 bytes" in str(refused.value)
    assert await snapshot(redis, key_prefix) == before


async def test_the_size_counts_every_event_of_history_and_inbox(store: Store, hub, redis):
    """`size` is what the next work item carries: what moves from the inbox to the history stays counted."""
    iid = "sized"
    pk = hub.for_instance(iid)
    got = await running(store, hub, iid)
    await store.raise_event(hub, iid, make.event_raised("during", "1"))
    await store.complete_orchestration(hub, iid, got.token, [b"action-1", b"action-22"])
    listed = await redis.lrange(pk.history(iid), 0, -1) + await redis.lrange(pk.inbox(iid), 0, -1)
    assert int(await redis.hget(pk.instance(iid), "size")) == sum(map(len, listed))
    again = await claim(store, hub, iid)
    execution = protocol.new_id()
    await store.continue_as_new(hub, iid, again.token, execution, [b"new-start", b"carried"])
    inbox = await redis.lrange(pk.inbox(iid), 0, -1)
    assert inbox == [b"new-start", b"carried"]
    assert int(await redis.hget(pk.instance(iid), "size")) == sum(map(len, inbox))


async def test_an_episode_past_the_work_item_budget_changes_nothing(store: Store, hub, redis, key_prefix):
    iid = "huge"
    got = await running(store, hub, iid)
    store.limits = dataclasses.replace(store.limits, max_work_item_bytes=500)
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.WorkItemTooLarge):
        await store.complete_orchestration(hub, iid, got.token, [b"z" * 600])
    assert await snapshot(redis, key_prefix) == before
    await store.complete_orchestration(hub, iid, got.token, [b"z" * 600], status="FAILED", enforce_limits=False)


async def test_a_final_state_too_large_for_one_reply_changes_nothing(store: Store, hub, redis, key_prefix):
    iid = "loud"
    got = await running(store, hub, iid)
    store.limits = dataclasses.replace(store.limits, max_state_bytes=300)
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.StateTooLarge):
        await store.complete_orchestration(hub, iid, got.token, [b"done"], status="COMPLETED", output="o" * 400)
    with pytest.raises(errors.StateTooLarge):
        await store.complete_orchestration(hub, iid, got.token, [b"done"], custom_status="c" * 400)
    assert await snapshot(redis, key_prefix) == before
    await store.complete_orchestration(hub, iid, got.token, [b"done"], status="COMPLETED", output="o" * 100)


@pytest.mark.parametrize("kind", ["deliver", "activity"])
async def test_a_message_without_room_marks_its_target_to_fail(store: Store, hub, redis, kind):
    store.limits = dataclasses.replace(store.limits, max_work_item_bytes=600)
    iid = f"target-{kind}"
    pk = hub.for_instance(iid)
    got = await running(store, hub, iid)
    item = protocol.activity_item(iid, f"e-{iid}", 1)
    await store.complete_orchestration(hub, iid, got.token, [], activities=[(item, b"request")])
    big = make.event_raised("big", "b" * 700)
    if kind == "deliver":
        assert await store.deliver_event(hub, iid, "m1", big, "EventTooLarge\nno room") is Code.TOO_LARGE
    else:
        token = protocol.claim_token(hub.hub, keys.partition_of(iid, hub.partitions), protocol.ACTIVITY, item)
        assert await store.claim_activity(hub, item, token, 60_000) == b"request"
        assert await store.complete_activity(hub, item, token, big, "EventTooLarge\nno room") is False
    h = await redis.hgetall(pk.instance(iid))
    assert h[b"overflow"] == b"EventTooLarge\nno room"
    assert await redis.lrange(pk.inbox(iid), 0, -1) == []  # the event itself was not appended
    assert await redis.zscore(pk.ready, iid) is not None  # its next dispatch applies the failure


async def test_a_late_writer_of_a_deleted_hub_writes_nothing(make_store, store, hub, redis, key_prefix):
    """A replica that still knows the deleted hub's generation is refused, in every partition."""
    ids = ids_in_distinct_partitions(hub)
    for iid in ids:
        await store.create_instance(hub, new(iid))
    other = make_store()
    await other.delete_task_hub(hub.hub)
    before = await snapshot(redis, key_prefix)
    for iid in ids:
        with pytest.raises(errors.HubGone):
            await store.create_instance(hub, new(iid + "-late"))
        with pytest.raises(errors.HubGone):
            await store.raise_event(hub, iid, make.event_raised("late", None))
        with pytest.raises(errors.HubGone):
            await store.promote_due(hub, 10, [keys.partition_of(iid, hub.partitions)])
    assert await snapshot(redis, key_prefix) == before
    store.forget_hub(hub.hub)
    again = await store.ensure_hub(hub.hub)  # created again: a newer generation writes where the old one may not
    assert again.generation > hub.generation
    await store.create_instance(again, new("fresh"))
    assert (await store.get_instance(again, "fresh"))["status"] == b"PENDING"


async def test_a_hub_being_deleted_can_not_be_used_until_the_deletion_ends(make_store, store, hub, redis):
    await redis.hset(hub.meta, mapping={"deleting": hub.generation + 1, "deleting_ms": 1})  # a deletion under way
    fresh = make_store()
    with pytest.raises(errors.HubDeleting):
        await fresh.ensure_hub(hub.hub)
    with pytest.raises(errors.HubDeleting):
        await fresh.find_hub(hub.hub)
    assert await fresh.unfinished_deletions(older_than_ms=10) == [hub.hub]
    await fresh.delete_task_hub(hub.hub)  # finishes it, with the tombstone the first deleter chose
    assert await redis.get(hub.partition(0).generation) == str(hub.generation + 1).encode()
    assert (await fresh.ensure_hub(hub.hub)).generation > hub.generation + 1


async def test_ended_instances_are_indexed_by_completion_time(store: Store, hub, redis):
    ids = ids_in_distinct_partitions(hub, 3)
    done, stopped, alive = ids
    got = await running(store, hub, done)
    await store.complete_orchestration(hub, done, got.token, [b"end"], status="COMPLETED")
    await store.create_instance(hub, new(stopped))
    await store.terminate_instance(hub, stopped, make.execution_terminated(None, False), None)
    await store.create_instance(hub, new(alive))
    now = await store.server_time_ms()
    ended = {iid: await redis.zscore(hub.for_instance(iid).by_completed, iid) for iid in ids}
    assert ended[alive] is None and ended[done] is not None and ended[stopped] is not None
    for iid in (done, stopped):
        p = keys.partition_of(iid, hub.partitions)
        assert await store.ended_before(hub, p, now + 1, 10) == [iid]
        assert await store.ended_before(hub, p, int(ended[iid]), 10) == []  # strictly before
    assert await store.purge_instances(hub, [done, stopped, alive]) == 2
    for iid in (done, stopped):
        assert await redis.zscore(hub.for_instance(iid).by_completed, iid) is None
