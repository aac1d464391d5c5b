"""Queries, purges and history reads of the store, on every backend, with P > 1 partitions."""
from __future__ import annotations

import asyncio

import pytest

from instance_setup import finish, index_order, set_created
from scheduler import errors
from scheduler.store import keys, queries as store_queries
from scheduler.store import Cursor, InstanceFilter
from store_helpers import PARTITIONS, new


async def create(store, hub, ids: list[str]) -> None:
    await asyncio.gather(*(store.create_instance(hub, new(iid)) for iid in ids))


async def all_pages(store, hub, flt: InstanceFilter, page_size: int, **kw) -> list[list[str]]:
    pages, after = [], None
    while True:
        found, after = await store.query_instances(hub, flt, page_size, after, **kw)
        pages.append([f.cursor.instance_id for f in found])
        if after is None:
            return pages
        assert len(found) == page_size, "a page with a token is full"


def spread(ids: list[str], hub: keys.HubKeys) -> set[int]:
    return {keys.partition_of(i, hub.partitions) for i in ids}


async def test_pages_merge_partitions_in_creation_order(store, hub, redis):
    ids = [f"q-{i:02d}" for i in range(23)]
    for i in range(0, len(ids), 5):  # several creation times, several ids per time
        await create(store, hub, ids[i:i + 5])
    assert spread(ids, hub) == set(range(PARTITIONS))
    expected = await index_order(redis, hub)
    assert sorted(expected) == ids
    pages = await all_pages(store, hub, InstanceFilter(), 4)
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 3]
    assert [i for p in pages for i in p] == expected


async def test_ties_at_one_millisecond_split_by_id_across_partitions(store, hub, redis):
    ids = [f"t-{i:02d}" for i in range(17)]
    await create(store, hub, ids)
    for iid in ids:
        await set_created(redis, hub, iid, 5_000 if iid < "t-12" else 6_000)
    pages = await all_pages(store, hub, InstanceFilter(), 3)
    assert [i for p in pages for i in p] == sorted(ids)
    assert [len(p) for p in pages] == [3, 3, 3, 3, 3, 2]


async def test_exact_last_page_has_no_token(store, hub):
    await create(store, hub, [f"e-{i}" for i in range(6)])
    found, after = await store.query_instances(hub, InstanceFilter(), 6)
    assert len(found) == 6 and after is None
    found, after = await store.query_instances(hub, InstanceFilter(), 5)
    assert len(found) == 5 and after == found[-1].cursor


async def test_inserts_between_pages_come_once_after_the_cursor(store, hub, redis):
    first = [f"a-{i}" for i in range(8)]
    await create(store, hub, first)
    found, after = await store.query_instances(hub, InstanceFilter(), 5)
    seen = [f.cursor.instance_id for f in found]
    late = [f"b-{i}" for i in range(6)]
    await create(store, hub, late)
    while after is not None:
        found, after = await store.query_instances(hub, InstanceFilter(), 5, after)
        seen += [f.cursor.instance_id for f in found]
    assert len(seen) == len(set(seen)) == 14
    assert seen == await index_order(redis, hub)
    assert set(seen[-6:]) == set(late)


async def test_filters_by_status_prefix_and_creation_range(store, hub, redis):
    ids = [f"{p}-{i}" for p in ("x", "y") for i in range(8)]
    await create(store, hub, ids)
    for n, iid in enumerate(sorted(ids)):
        await set_created(redis, hub, iid, 10_000 + n)
    for iid in ("x-1", "x-4", "y-2"):
        await finish(redis, hub, iid, "COMPLETED")
    await finish(redis, hub, "x-6", "FAILED")

    done = await all_pages(store, hub, InstanceFilter(statuses=frozenset({"COMPLETED", "FAILED"})), 2)
    assert [i for p in done for i in p] == ["x-1", "x-4", "x-6", "y-2"]
    pending_x = await all_pages(store, hub, InstanceFilter(statuses=frozenset({"PENDING"}), id_prefix="x-"), 2)
    assert [i for p in pending_x for i in p] == ["x-0", "x-2", "x-3", "x-5", "x-7"]
    # x-0..x-7 have 10000..10007, y-0.. 10008..: from inclusive, to exclusive.
    ranged = await all_pages(store, hub, InstanceFilter(created_from_ms=10_006, created_to_ms=10_010), 3)
    assert [i for p in ranged for i in p] == ["x-6", "x-7", "y-0", "y-1"]
    nothing = await store.query_instances(hub, InstanceFilter(id_prefix="z"), 5)
    assert nothing == ([], None)


async def test_cursor_before_the_range_start_starts_at_the_range(store, hub, redis):
    ids = [f"r-{i}" for i in range(5)]
    await create(store, hub, ids)
    for n, iid in enumerate(ids):
        await set_created(redis, hub, iid, 20_000 + n)
    found, after = await store.query_instances(hub, InstanceFilter(created_from_ms=20_002), 10, Cursor(5, "zzz"))
    assert [f.cursor.instance_id for f in found] == ["r-2", "r-3", "r-4"] and after is None
    found, _ = await store.query_instances(hub, InstanceFilter(created_to_ms=20_003), 10, Cursor(20_003, ""))
    assert found == []


async def test_hash_and_start_event_come_with_a_match_only_when_asked(store, hub):
    await create(store, hub, ["s-1"])
    [with_start], _ = await store.query_instances(hub, InstanceFilter(), 5)
    assert with_start.fields["start_event"] == b"start:s-1"
    assert with_start.fields["status"] == b"PENDING" and with_start.fields["name"] == b"Orch"
    assert with_start.cursor.created_ms == int(with_start.fields["created_ms"])
    [bare], _ = await store.query_instances(hub, InstanceFilter(), 5, start_events=False)
    assert "start_event" not in bare.fields and bare.fields["status"] == b"PENDING"


async def test_terminal_only_and_completion_range(store, hub, redis):
    await create(store, hub, [f"c-{i}" for i in range(6)])
    await finish(redis, hub, "c-0", "COMPLETED", 100)
    await finish(redis, hub, "c-1", "TERMINATED", 200)
    await finish(redis, hub, "c-2", "FAILED", 300)
    terminal = InstanceFilter(terminal_only=True)
    assert sorted(f.cursor.instance_id for f in (await store.query_instances(hub, terminal, 10))[0]) == \
        ["c-0", "c-1", "c-2"]
    ranged = InstanceFilter(terminal_only=True, completed_from_ms=200, completed_to_ms=300)
    assert [f.cursor.instance_id for f in (await store.query_instances(hub, ranged, 10))[0]] == ["c-1"]
    # a pending instance has no completion time: it matches no completion bound, even with terminal_only off
    open_ended = InstanceFilter(completed_to_ms=10**15)
    assert sorted(f.cursor.instance_id for f in (await store.query_instances(hub, open_ended, 10))[0]) == \
        ["c-0", "c-1", "c-2"]


@pytest.mark.parametrize("token", ["", "abc", "12", "|x", "12|", "-5|x", "1.5|x"])
def test_bad_tokens_are_invalid_requests(token):
    with pytest.raises(errors.InvalidRequest, match="lastInstanceKey"):
        Cursor.decode(token, "lastInstanceKey")


def test_tokens_round_trip_ids_with_separators():
    cursor = Cursor(1234, "a|b c")
    assert Cursor.decode(cursor.encode(), "t") == cursor


async def test_purge_removes_every_trace_of_a_terminal_instance(store, hub, redis):
    await create(store, hub, ["p-1", "p-2"])
    pk = hub.for_instance("p-1")
    await redis.rpush(pk.history("p-1"), b"event")
    await redis.zadd(pk.due, {"p-1": 99})
    await finish(redis, hub, "p-1", "COMPLETED")
    await redis.zadd(pk.ready, {"p-1": 1})
    assert await store.purge_instance(hub, "p-1") is True
    assert not await redis.exists(pk.instance("p-1"), pk.inbox("p-1"), pk.history("p-1"))
    for zset in (pk.due, pk.ready):
        assert await redis.zscore(zset, "p-1") is None
    assert not [m for m in await redis.zrange(pk.by_status, 0, -1) if m.endswith(b"|p-1")]
    assert int(await redis.hget(pk.stats, "COMPLETED")) == 0
    assert await store.get_instance(hub, "p-2") is not None
    assert await store.purge_instance(hub, "p-1") is False  # gone already


async def test_purge_leaves_a_non_terminal_instance_as_it_is(store, hub, redis):
    await create(store, hub, ["n-1"])
    pk = hub.for_instance("n-1")
    before = {k: await redis.dump(k) for k in (pk.instance("n-1"), pk.inbox("n-1"), pk.by_status, pk.ready,
                                               pk.stats)}
    assert await store.purge_instance(hub, "n-1") is False
    assert {k: await redis.dump(k) for k in before} == before
    assert await store.purge_instance(hub, "never-was") is False


async def test_purge_batch_counts_only_terminal_ids_once(store, hub, redis):
    await create(store, hub, ["b-1", "b-2", "b-3"])
    await finish(redis, hub, "b-1", "FAILED")
    await finish(redis, hub, "b-3", "TERMINATED")
    assert await store.purge_instances(hub, ["b-1", "b-2", "b-3", "b-1", "nope"]) == 2
    assert await store.get_instance(hub, "b-2") is not None
    assert await index_order(redis, hub) == ["b-2"]


async def test_purge_matching_walks_in_batches_and_honours_filters(store, hub, redis, monkeypatch):
    monkeypatch.setattr(store_queries, "_PURGE_BATCH", 3)
    ids = [f"m-{i:02d}" for i in range(14)]
    await create(store, hub, ids)
    for n, iid in enumerate(ids):
        await set_created(redis, hub, iid, 30_000 + n)
        if n % 7 != 6:  # m-06 and m-13 stay pending
            await finish(redis, hub, iid, "FAILED" if n % 2 else "COMPLETED")
    only_failed = InstanceFilter(statuses=frozenset({"FAILED"}), created_to_ms=30_009)
    assert await store.purge_matching(hub, only_failed) == (4, True)  # m-01, 03, 05, 07 (m-09: not before "to")
    left = await index_order(redis, hub)
    assert set(ids) - set(left) == {"m-01", "m-03", "m-05", "m-07"}
    assert await store.purge_matching(hub, InstanceFilter(statuses=frozenset({"PENDING"}))) == (0, True)
    assert await store.purge_matching(hub, InstanceFilter()) == (8, True)
    assert await index_order(redis, hub) == ["m-06", "m-13"]
    stats = {}
    for pk in hub.all_partitions():
        for k, v in (await redis.hgetall(pk.stats)).items():
            stats[k.decode()] = stats.get(k.decode(), 0) + int(v)
    assert {k: v for k, v in stats.items() if v} == {"PENDING": 2}


async def test_purge_matching_stops_at_the_timeout_and_says_so(store, hub, redis, monkeypatch):
    monkeypatch.setattr(store_queries, "_PURGE_BATCH", 2)
    ids = [f"o-{i}" for i in range(5)]
    await create(store, hub, ids)
    for iid in ids:
        await finish(redis, hub, iid, "COMPLETED")
    assert await store.purge_matching(hub, InstanceFilter(), timeout=1e-9) == (2, False)
    assert len(await index_order(redis, hub)) == 3
    assert await store.purge_matching(hub, InstanceFilter(), timeout=60) == (3, True)


async def test_history_pages(store, hub, redis):
    await create(store, hub, ["h-1"])
    assert await store.history_page(hub, "h-0", 0, 10) is None
    assert await store.history_page(hub, "h-1", 0, 10) == []  # never dispatched: events wait in the inbox
    events = [f"e{i}".encode() for i in range(25)]
    await redis.rpush(hub.for_instance("h-1").history("h-1"), *events)
    assert await store.history_page(hub, "h-1", 0, 10) == events[:10]
    assert await store.history_page(hub, "h-1", 20, 10) == events[20:]
    assert await store.history_page(hub, "h-1", 30, 10) == []
