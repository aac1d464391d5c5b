"""Task hubs: metadata fixes the partition count, delete/recreate, stats."""
from __future__ import annotations

import uuid

from scheduler.store import keys
from scheduler.store import SCHEMA_VERSION, Store
from store_helpers import PARTITIONS, ids_in_distinct_partitions, new, prefix_keys, scan_keys


async def test_hub_metadata_is_created_once(store: Store, hub, redis, key_prefix, hub_name):
    assert (hub.prefix, hub.hub, hub.partitions) == (key_prefix, hub_name, PARTITIONS) and hub.generation > 0
    meta = await redis.hgetall(hub.meta)
    assert meta[b"partitions"] == str(PARTITIONS).encode()
    assert meta[b"generation"] == str(hub.generation).encode()
    assert meta[b"schema"] == str(SCHEMA_VERSION).encode()
    assert abs(int(meta[b"created_ms"]) - await store.server_time_ms()) < 5000
    assert await store.known_hubs() == [hub_name]


async def test_stored_partition_count_wins_over_another_default(make_store, store, hub, key_prefix, hub_name):
    other = make_store(default_partitions=16)
    assert (await other.ensure_hub(hub_name)).partitions == PARTITIONS
    fresh = await other.ensure_hub(hub_name + "-new")
    assert fresh.partitions == 16
    assert await store.known_hubs() == sorted([hub_name, hub_name + "-new"])


async def populate(store: Store, hub: keys.HubKeys) -> None:
    now = await store.server_time_ms()
    for i, iid in enumerate(ids_in_distinct_partitions(hub)):
        await store.create_instance(hub, new(iid, due_ms=now + 60_000 if i % 2 else None))
        await store.redis.rpush(hub.for_instance(iid).history(iid), b"h")


async def test_delete_task_hub_removes_only_that_hubs_keys(make_store, store, hub, redis, key_prefix, hub_name):
    await populate(store, hub)
    lookalike = await store.ensure_hub(hub_name + "-2")  # shares the name as a prefix
    second = await store.ensure_hub("z" + hub_name)
    await populate(store, lookalike)
    await populate(store, second)
    foreign_prefix = "f" + uuid.uuid4().hex[:10]
    foreign = make_store(foreign_prefix)
    await populate(foreign, await foreign.ensure_hub(hub_name))  # same hub name, another prefix
    await redis.set(f"{key_prefix}x:{{{hub_name}}}:meta", "near-prefix")
    await redis.set(f"{key_prefix}:{{{hub_name}:x}}:due", "not a partition")

    ours = {k for k in await prefix_keys(redis, key_prefix) if hub.owns(k)}
    assert len(ours) > 3 * hub.partitions

    async def all_test_keys() -> set[str]:  # this test's keys only: the real Redis is shared by the session
        return await scan_keys(redis, key_prefix + "*") | await scan_keys(redis, foreign_prefix + "*")

    others_before = {k: await redis.dump(k) for k in await all_test_keys() if k not in ours}

    deleted = await store.delete_task_hub(hub_name)

    assert deleted == len(ours)
    remaining = await all_test_keys()
    assert not remaining & ours
    counters = {keys.hubs_key(key_prefix), keys.generations_key(key_prefix)}
    assert {k: await redis.dump(k) for k in others_before if k not in counters} == \
        {k: v for k, v in others_before.items() if k not in counters}
    assert await store.known_hubs() == sorted([hub_name + "-2", "z" + hub_name])
    assert await foreign.known_hubs() == [hub_name]
    assert await store.get_instance(lookalike, ids_in_distinct_partitions(lookalike, 1)[0]) is not None


async def test_delete_task_hub_in_batches(store: Store, hub, redis):
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(1234):
            pipe.set(hub.for_instance(f"b{i}").instance(f"b{i}"), "x")
        await pipe.execute()
    assert await store.delete_task_hub(hub.hub) == 1234 + 1  # + meta
    assert await hub_keys_left(redis, hub) == tombstones(hub)


def tombstones(hub: keys.HubKeys) -> set[str]:
    """What a deleted hub leaves: each partition's generation, sealed against late writers (it expires)."""
    return {pk.generation for pk in hub.all_partitions()}


async def hub_keys_left(redis, hub: keys.HubKeys) -> set[str]:
    left = {k for k in await prefix_keys(redis, hub.prefix) if hub.owns(k)}
    for key in left & tombstones(hub):
        assert 0 < await redis.pttl(key) <= 24 * 3600 * 1000, f"{key} should expire"
    return left


async def test_delete_unknown_hub_deletes_nothing(store: Store, hub, redis, key_prefix):
    await populate(store, hub)
    before = await prefix_keys(redis, key_prefix)
    assert await store.delete_task_hub("never-created") == 0
    assert await prefix_keys(redis, key_prefix) == before


async def test_deleted_hub_is_recreated_on_next_use(store: Store, hub):
    await populate(store, hub)
    await store.delete_task_hub(hub.hub)
    again = await store.ensure_hub(hub.hub)
    assert again.partitions == hub.partitions and again.generation > hub.generation
    assert await store.get_instance(again, ids_in_distinct_partitions(hub, 1)[0]) is None
    assert (await store.hub_stats(again)).statuses == {}


async def test_hub_deleted_by_another_replica_is_recreated_on_next_use(make_store, store, hub, key_prefix, hub_name):
    # `store` has the hub cached; another replica deletes it. Without metadata and registry entry the
    # hub is invisible to other replicas' promoters, and its partition count is no longer fixed.
    other = make_store(default_partitions=PARTITIONS)
    await other.delete_task_hub(hub_name)
    # Each replica's housekeeping revalidates its cache every 2 s (and the deletion is also
    # announced over pub/sub, which the App routes to forget_hub).
    assert await store.revalidate_hubs() == [hub_name]
    again = await store.ensure_hub(hub_name)
    await store.create_instance(again, new("after-delete"))
    assert await store.redis.hget(again.meta, "partitions") == str(PARTITIONS).encode()
    assert await other.known_hubs() == [hub_name]


async def test_create_task_hub_recreate_wipes(make_store, store, hub, key_prefix, hub_name):
    await populate(store, hub)
    other = make_store(default_partitions=8)
    recreated = await other.create_task_hub(hub_name, recreate_if_exists=True)
    assert recreated.partitions == 8  # a new hub: the creator's default applies
    stats = await other.hub_stats(recreated)
    assert (stats.statuses, stats.due, stats.ready) == ({}, 0, 0)
    for iid in ids_in_distinct_partitions(hub):
        assert await store.get_instance(hub, iid) is None  # where the old instances lived
    assert await hub_keys_left(store.redis, hub) == {hub.meta} | tombstones(hub)
    assert await other.known_hubs() == [hub_name]


async def test_create_task_hub_without_recreate_keeps_everything(store: Store, hub, redis, key_prefix):
    await populate(store, hub)
    before = {k: await redis.dump(k) for k in await prefix_keys(redis, key_prefix)}
    again = await store.create_task_hub(hub.hub, recreate_if_exists=False)
    assert again == hub
    assert {k: await redis.dump(k) for k in await prefix_keys(redis, key_prefix)} == before


async def test_hub_stats_numbers(store: Store, hub, redis):
    now = await store.server_time_ms()
    ids = ids_in_distinct_partitions(hub)
    created = [await store.create_instance(hub, new(iid)) for iid in ids[:3]]
    await store.create_instance(hub, new(ids[3], due_ms=now + 50_000))
    await store.create_instance(hub, new("extra", due_ms=now + 40_000))
    pk = hub.for_instance(ids[0])
    await redis.hset(pk.instance(ids[0]), "status", "RUNNING")  # as a dispatcher would
    await redis.hincrby(pk.stats, "PENDING", -1)
    await redis.hincrby(pk.stats, "RUNNING", 1)
    stats = await store.hub_stats(hub)
    assert stats.hub == hub.hub and stats.partitions == PARTITIONS and len(stats.per_partition) == PARTITIONS
    assert stats.statuses == {"PENDING": 4, "RUNNING": 1}  # zero counts are left out
    assert (stats.ready, stats.oldest_ready_ms) == (3, min(created))
    assert (stats.due, stats.next_due_ms) == (2, now + 40_000)
    assert now <= stats.now_ms <= await store.server_time_ms()
    assert sum(p.ready for p in stats.per_partition) == 3
    assert sum(sum(p.statuses.values()) for p in stats.per_partition) == 5


async def test_hub_stats_of_an_empty_hub(store: Store, hub):
    stats = await store.hub_stats(hub)
    assert (stats.statuses, stats.due, stats.ready, stats.next_due_ms, stats.oldest_ready_ms) == ({}, 0, 0, None, None)


async def test_registry_admits_at_most_max_hubs_across_stores(make_store, store, hub, redis, key_prefix, hub_name):
    """The bound is checked and the hub added in one script: two stores (two replicas) racing for the last
    place admit one hub; the other is refused with nothing written."""
    import asyncio

    from scheduler import errors
    one, two = make_store(max_hubs=2), make_store(max_hubs=2)
    results = await asyncio.gather(one.ensure_hub(hub_name + "-x"), two.ensure_hub(hub_name + "-y"),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, errors.TooManyTaskHubs)]
    assert len(refused) == 1 and len([r for r in results if isinstance(r, keys.HubKeys)]) == 1
    assert len(await store.known_hubs()) == 2
    made = {k for k in await scan_keys(redis, f"{key_prefix}:*") if k.endswith(":meta")}
    assert len(made) == 2
    assert (await one.ensure_hub(hub_name)).hub == hub_name  # an existing hub is no new one
