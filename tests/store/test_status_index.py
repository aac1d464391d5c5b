"""The status index that answers status-filtered queries, and the work bound of a query page, on every backend."""
from __future__ import annotations

import asyncio
import dataclasses

from instance_setup import status_member
from scheduler.store import InstanceFilter
from store_helpers import new

IDS = ("a", "b", "c", "d")


async def members_of_hashes(redis, hub, ids=IDS) -> list[set[str]]:
    """Per partition, the status index members the hash of each instance of ``ids`` says it should have
    (one under its status; in a hub of schema 1 or 2, one under "*" too)."""
    expected = [set() for _ in range(hub.partitions)]
    for iid in ids:
        status, created = await redis.hmget(hub.for_instance(iid).instance(iid), "status", "created_ms")
        if status is not None:  # not purged
            wanted = expected[hub.all_partitions().index(hub.for_instance(iid))]
            wanted.add(status_member(status.decode(), int(created), iid))
            if hub.indexes_all:
                wanted.add(status_member("*", int(created), iid))
    return expected


async def index_agrees(redis, hub, ids=IDS) -> None:
    actual = [{m.decode() for m in await redis.zrange(pk.by_status, 0, -1)} for pk in hub.all_partitions()]
    assert actual == await members_of_hashes(redis, hub, ids)


async def with_status(store, hub, status: str) -> list[str]:
    found, after = await store.query_instances(hub, InstanceFilter(statuses=frozenset({status})), 100)
    assert after is None
    return sorted(f.cursor.instance_id for f in found)


async def test_every_status_change_moves_the_instance_in_the_index(store, hub, redis):
    await asyncio.gather(*(store.create_instance(hub, new(iid)) for iid in ("a", "b", "c", "d")))
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "PENDING") == ["a", "b", "c", "d"]

    assert await store.claim_orchestration(hub, "a", "tok", 60_000, b"episode") is not None
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "RUNNING") == ["a"]
    await store.complete_orchestration(hub, "a", "tok", [], status="FAILED")
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "FAILED") == ["a"]
    await store.rewind_instance(hub, "a", b"rewound")
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "RUNNING") == ["a"] and await with_status(store, hub, "FAILED") == []

    await store.suspend_instance(hub, "b", b"suspended")
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "SUSPENDED") == ["b"]
    await store.resume_instance(hub, "b", b"resumed")
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "PENDING") == ["b", "c", "d"]

    await store.terminate_instance(hub, "c", b"terminated", None)
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "TERMINATED") == ["c"]
    await store.create_instance(hub, new("c", replaceable=("TERMINATED",)))  # replaced: a new creation time
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "TERMINATED") == []

    await store.terminate_instance(hub, "d", b"terminated", None)
    assert await store.purge_instance(hub, "d") is True
    await index_agrees(redis, hub)
    assert await with_status(store, hub, "TERMINATED") == [] and await with_status(store, hub, "PENDING") == ["b", "c"]


async def all_ids(store, hub) -> list[str]:
    found, after = await store.query_instances(hub, InstanceFilter(), 100)
    assert after is None
    return [f.cursor.instance_id for f in found]


async def test_a_hub_made_before_the_index_is_queried_through_the_creation_index(store, hub, redis):
    old_hub = dataclasses.replace(hub, schema=1)
    await store.create_instance(old_hub, new("old"))
    pk = hub.for_instance("old")
    assert await redis.zscore(pk.by_created, "old") is not None  # what its queries read
    await redis.delete(pk.by_status)  # as an instance created before the upgrade
    assert await with_status(store, old_hub, "PENDING") == ["old"]
    assert await all_ids(store, old_hub) == ["old"]
    assert await with_status(store, hub, "PENDING") == []  # a hub made with the index trusts it
    assert await all_ids(store, hub) == []


async def test_the_hub_schema_decides_by_created_and_the_every_instance_members(store, hub, redis):
    """Schema 3 (new hubs): an instance has one member, under its status, and no by-created entry; an
    unfiltered query reads every status's range. Schema 2: also a "*" member, which its unfiltered
    queries read. Purges take both kinds out wherever they are."""
    assert hub.schema == 3 and not hub.indexes_all and not hub.keeps_by_created
    v2 = dataclasses.replace(hub, schema=2)
    await asyncio.gather(*(store.create_instance(hub, new(iid)) for iid in IDS))
    await store.terminate_instance(hub, "b", b"terminated", None)
    await store.suspend_instance(hub, "c", b"suspended")
    await index_agrees(redis, hub)
    assert [await redis.zcard(pk.by_created) for pk in hub.all_partitions()] == [0] * hub.partitions
    assert sorted(await all_ids(store, hub)) == sorted(IDS)
    assert await all_ids(store, v2) == []  # a schema-2 hub reads "*" members, which schema 3 does not write

    async def index_holds(new_ones, old_ones):
        actual = [{m.decode() for m in await redis.zrange(pk.by_status, 0, -1)} for pk in hub.all_partitions()]
        assert actual == [a | b for a, b in zip(await members_of_hashes(redis, hub, new_ones),
                                                await members_of_hashes(redis, v2, old_ones))]

    await asyncio.gather(*(store.create_instance(v2, new(iid)) for iid in ("e", "f")))
    await index_holds(IDS, ("e", "f"))
    assert sorted(await all_ids(store, v2)) == ["e", "f"]
    await store.terminate_instance(v2, "e", b"terminated", None)
    assert await store.purge_instance(hub, "e") is True  # its "*" member goes too
    assert await store.purge_instance(hub, "b") is True
    await index_holds(("a", "c", "d"), ("f",))
    assert sorted(await all_ids(store, hub)) == ["a", "c", "d", "f"]


async def test_a_hub_reads_its_schema_from_its_metadata(store, hub, redis):
    await redis.hset(hub.meta, "schema", 2)
    store.forget_hub(hub.hub)
    assert (await store.find_hub(hub.hub)).schema == 2
    assert (await store.ensure_hub(hub.hub)).schema == 2
    await redis.hdel(hub.meta, "schema")  # hubs from before schema versions
    store.forget_hub(hub.hub)
    assert (await store.find_hub(hub.hub)).schema == 1


async def pages(store, hub, flt: InstanceFilter, page_size: int, examine: int) -> list[list[str]]:
    out, after = [], None
    while True:
        found, after = await store.query_instances(hub, flt, page_size, after, examine=examine)
        out.append([f.cursor.instance_id for f in found])
        if after is None:
            return out
        assert len(out) < 100, "paging does not end"


async def test_a_page_that_spends_its_budget_ends_early_with_a_token_and_paging_finds_all(store, hub, redis):
    ids = [f"w-{i:02d}" for i in range(40)]
    await asyncio.gather(*(store.create_instance(hub, new(iid)) for iid in ids))
    wanted = ["w-07", "w-23", "w-31"]
    for iid in wanted:  # a status that few have: answered by the index
        await store.terminate_instance(hub, iid, b"terminated", None)
    by_prefix = await pages(store, hub, InstanceFilter(id_prefix="w-0"), 100, examine=20)
    assert sorted(i for p in by_prefix for i in p) == ids[:10]
    assert len(by_prefix) > 1 and any(p == [] for p in by_prefix[:-1]), "short and empty pages carry a token"
    nothing = await pages(store, hub, InstanceFilter(id_prefix="none"), 100, examine=20)
    assert len(nothing) > 1 and all(p == [] for p in nothing)
    ranged = await pages(store, hub, InstanceFilter(terminal_only=True, completed_from_ms=1), 100, examine=10)
    assert sorted(i for p in ranged for i in p) == wanted
    [terminated] = await pages(store, hub, InstanceFilter(statuses=frozenset({"TERMINATED"})), 100, examine=1000)
    assert sorted(terminated) == wanted
