"""The status index that answers status-filtered queries, and the work bound of a query page, on every backend."""
from __future__ import annotations

import asyncio

from instance_setup import status_member
from scheduler.store import InstanceFilter
from store_helpers import new


async def members_of_hashes(redis, hub) -> list[set[str]]:
    """Per partition, the status index members every instance hash says it should have."""
    expected = []
    for pk in hub.all_partitions():
        want = set()
        for iid in [m.decode() for m in await redis.zrange(pk.by_created, 0, -1)]:
            status, created = await redis.hmget(pk.instance(iid), "status", "created_ms")
            want |= {status_member(status.decode(), int(created), iid), status_member("*", int(created), iid)}
        expected.append(want)
    return expected


async def index_agrees(redis, hub) -> None:
    actual = [{m.decode() for m in await redis.zrange(pk.by_status, 0, -1)} for pk in hub.all_partitions()]
    assert actual == await members_of_hashes(redis, hub)


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


async def test_a_hub_made_before_the_index_is_queried_through_the_creation_index(store, hub, redis):
    await store.create_instance(hub, new("old"))
    pk = hub.for_instance("old")
    await redis.delete(pk.by_status)  # as an instance created before the upgrade
    await redis.hset(hub.meta, "schema", 1)
    assert await with_status(store, hub, "PENDING") == ["old"]
    await redis.hset(hub.meta, "schema", 2)  # a hub made with the index trusts it
    assert await with_status(store, hub, "PENDING") == []


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
