"""Store.create_instance and Store.get_instance."""
from __future__ import annotations

import asyncio

import pytest

from scheduler import errors
from scheduler.store import Store

from store_helpers import ids_in_distinct_partitions, new, prefix_keys


async def test_create_now_writes_hash_inbox_index_stats_and_ready(store: Store, hub, redis):
    ids = ids_in_distinct_partitions(hub)
    for iid in ids:
        t0 = await store.server_time_ms()
        created = await store.create_instance(hub, new(iid, input='"x"'))
        t1 = await store.server_time_ms()
        assert t0 <= created <= t1
        pk = hub.for_instance(iid)
        h = await store.get_instance(hub, iid)
        start = f"start:{iid}".encode()
        assert h == {"status": b"PENDING", "created_ms": str(created).encode(),  # updated_ms: at the first change
                     "name": b"Orch", "execution_id": f"e-{iid}".encode(), "input": b'"x"',
                     "start": b"inbox 0", "start_event": start, "size": str(len(start)).encode()}
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [f"start:{iid}".encode()]
        assert await redis.zrange(pk.by_status, 0, -1) == [f"PENDING|{created:016d}|{iid}".encode()]
        assert not await redis.exists(pk.by_created)  # only hubs of schema 1 keep it
        assert await redis.zscore(pk.ready, iid) == created
        assert await redis.zscore(pk.due, iid) is None
        assert await redis.hget(pk.stats, "PENDING") == b"1"
        assert not await redis.exists(pk.history(iid))
    stats = await store.hub_stats(hub)
    assert stats.statuses == {"PENDING": len(ids)} and stats.ready == len(ids) and stats.due == 0
    assert all(p.ready == 1 for p in stats.per_partition)  # one per partition: every partition used


async def test_create_future_goes_to_due_not_ready(store: Store, hub, redis):
    now = await store.server_time_ms()
    for offset, iid in enumerate(ids_in_distinct_partitions(hub)):
        due = now + 60_000 + offset
        await store.create_instance(hub, new(iid, due_ms=due))
        pk = hub.for_instance(iid)
        assert await redis.zscore(pk.due, iid) == due
        assert await redis.zscore(pk.ready, iid) is None
        assert (await store.get_instance(hub, iid))["status"] == b"PENDING"
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [f"start:{iid}".encode()]
    stats = await store.hub_stats(hub)
    assert (stats.due, stats.ready, stats.next_due_ms) == (hub.partitions, 0, now + 60_000)


async def test_due_time_already_past_is_ready_at_once(store: Store, hub, redis):
    now = await store.server_time_ms()
    await store.create_instance(hub, new("past", due_ms=now - 1000))
    pk = hub.for_instance("past")
    assert await redis.zscore(pk.ready, "past") is not None
    assert await redis.zscore(pk.due, "past") is None


async def test_duplicate_id_raises_and_changes_nothing(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("dup", due_ms=(await store.server_time_ms()) + 60_000, input="first"))
    before = {k: await redis.dump(k) for k in await prefix_keys(redis, key_prefix)}
    with pytest.raises(errors.InstanceExists) as e:
        await store.create_instance(hub, new("dup", input="second"))
    assert (e.value.instance_id, e.value.status) == ("dup", "PENDING")
    assert "'dup' already exists with status PENDING" in str(e.value)
    after = {k: await redis.dump(k) for k in await prefix_keys(redis, key_prefix)}
    assert after == before


async def test_status_not_in_replaceable_list_is_not_replaced(store: Store, hub):
    await store.create_instance(hub, new("r"))
    with pytest.raises(errors.InstanceExists):
        await store.create_instance(hub, new("r", replaceable=("COMPLETED", "FAILED", "PENDINGX")))


async def test_replaceable_status_replaces_a_due_instance(store: Store, hub, redis):
    pk = hub.for_instance("rep")
    now = await store.server_time_ms()
    await store.create_instance(hub, new("rep", due_ms=now + 60_000, input="old", version="v1"))
    await redis.rpush(pk.history("rep"), b"old-history")
    await store.create_instance(hub, new("rep", replaceable=("COMPLETED", "PENDING"), input="new"))
    h = await store.get_instance(hub, "rep")
    assert h["input"] == b"new" and "version" not in h  # old fields gone, not merged
    assert await redis.zscore(pk.due, "rep") is None
    assert await redis.zscore(pk.ready, "rep") is not None
    assert await redis.lrange(pk.inbox("rep"), 0, -1) == [b"start:rep"]
    assert not await redis.exists(pk.history("rep"))
    assert (await store.hub_stats(hub)).statuses == {"PENDING": 1}


async def test_replacing_a_ready_instance_with_a_delayed_one(store: Store, hub, redis):
    pk = hub.for_instance("rep2")
    await store.create_instance(hub, new("rep2"))
    due = (await store.server_time_ms()) + 60_000
    await store.create_instance(hub, new("rep2", due_ms=due, replaceable=("PENDING",)))
    assert await redis.zscore(pk.ready, "rep2") is None
    assert await redis.zscore(pk.due, "rep2") == due
    assert await redis.lrange(pk.inbox("rep2"), 0, -1) == [b"start:rep2"]


async def test_replacing_a_finished_instance_moves_the_stats(store: Store, hub, redis):
    pk = hub.for_instance("done")
    await store.create_instance(hub, new("done"))
    # Simulate completion (no worker yet): status and stats as a completion would leave them.
    await redis.hset(pk.instance("done"), "status", "COMPLETED")
    await redis.hincrby(pk.stats, "PENDING", -1)
    await redis.hincrby(pk.stats, "COMPLETED", 1)
    await redis.zrem(pk.ready, "done")
    await store.create_instance(hub, new("done", replaceable=("COMPLETED",)))
    assert (await store.hub_stats(hub)).statuses == {"PENDING": 1}
    assert (await store.get_instance(hub, "done"))["status"] == b"PENDING"


async def test_get_instance_unknown_is_none(store: Store, hub):
    assert await store.get_instance(hub, "nope") is None


async def test_instances_of_two_hubs_are_separate(store: Store, hub, hub_name):
    other = await store.ensure_hub(hub_name + "-other")
    await store.create_instance(hub, new("same-id", input="a"))
    await store.create_instance(other, new("same-id", input="b"))
    assert (await store.get_instance(hub, "same-id"))["input"] == b"a"
    assert (await store.get_instance(other, "same-id"))["input"] == b"b"


async def test_concurrent_creates_of_one_id_have_one_winner(make_store, key_prefix, hub_name, store, hub, redis):

    stores = [make_store(default_partitions=4) for _ in range(8)]
    hubs = [await s.ensure_hub(hub_name) for s in stores]

    async def attempt(n: int) -> str:
        try:
            await stores[n].create_instance(hubs[n], new("race", input=str(n)))
            return "won"
        except errors.InstanceExists:
            return "lost"

    outcomes = await asyncio.gather(*(attempt(n) for n in range(8)))
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    winner = outcomes.index("won")
    assert (await store.get_instance(hub, "race"))["input"] == str(winner).encode()
    pk = hub.for_instance("race")
    assert await redis.llen(pk.inbox("race")) == 1
    assert (await store.hub_stats(hub)).statuses == {"PENDING": 1}
