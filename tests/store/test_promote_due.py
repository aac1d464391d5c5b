"""Store.promote_due: never early, bounded, reports the next due time, exactly once under races."""
from __future__ import annotations

import asyncio

from scheduler.store import keys
from scheduler.store import Store
from store_helpers import PARTITIONS, ids_in_distinct_partitions, new


def same_partition_ids(hub: keys.HubKeys, count: int, partition: int = 0) -> list[str]:
    ids, i = [], 0
    while len(ids) < count:
        if keys.partition_of(f"p-{i}", hub.partitions) == partition:
            ids.append(f"p-{i}")
        i += 1
    return ids


async def test_never_early_and_promoted_once_due(store: Store, hub, redis):
    due = await store.server_time_ms() + 200
    await store.create_instance(hub, new("soon", due_ms=due))
    pk = hub.for_instance("soon")
    early_calls = 0
    while True:
        result = await store.promote_due(hub, limit=100)
        if result.promoted_due_ms:
            break
        # Not promoted: it is still due and its time has not come (slack: partitions run one after another).
        assert result.next_due_ms == due
        assert result.now_ms < due + 100, f"not promoted {result.now_ms - due} ms after its due time"
        assert await redis.zscore(pk.ready, "soon") is None
        early_calls += 1
        await asyncio.sleep(0.002)
    assert early_calls > 0, "the test never called before the due time"
    assert result.promoted_due_ms == [due]
    assert result.now_ms >= due  # never before its time, by the Redis clock
    assert result.next_due_ms is None and result.more is False
    assert await redis.zscore(pk.due, "soon") is None
    assert await redis.zscore(pk.ready, "soon") == due  # ready since its due time
    again = await store.promote_due(hub, limit=100)
    assert again.promoted_due_ms == []


async def test_nothing_due_reports_nothing(store: Store, hub):
    now = await store.server_time_ms()
    result = await store.promote_due(hub, limit=10)
    assert result.promoted_due_ms == [] and result.next_due_ms is None and result.more is False
    assert now <= result.now_ms <= await store.server_time_ms()


async def test_next_due_is_the_earliest_over_all_partitions(store: Store, hub, redis):
    now = await store.server_time_ms()
    a, b, c = ids_in_distinct_partitions(hub, 3)
    await store.create_instance(hub, new(a, due_ms=now + 60_000))
    await store.create_instance(hub, new(b, due_ms=now + 30_000))
    await store.create_instance(hub, new(c, due_ms=now + 90_000))
    result = await store.promote_due(hub, limit=10)
    assert result.promoted_due_ms == [] and result.next_due_ms == now + 30_000
    assert (await store.hub_stats(hub)).due == 3


async def test_promotion_is_bounded_by_limit(store: Store, hub, redis):
    now = await store.server_time_ms()
    ids = same_partition_ids(hub, 7)
    pk = hub.for_instance(ids[0])
    await redis.zadd(pk.due, {iid: now - 100 + i for i, iid in enumerate(ids)})
    await redis.zadd(pk.due, {"later": now + 60_000})
    batches = []
    while True:
        result = await store.promote_due(hub, limit=3)
        batches.append(result.promoted_due_ms)
        if not result.more:
            break
        assert len(batches) < 10
    assert batches == [[now - 100, now - 99, now - 98], [now - 97, now - 96, now - 95], [now - 94]]
    assert result.next_due_ms == now + 60_000
    assert await redis.zrange(pk.ready, 0, -1) == [i.encode() for i in ids]
    assert await redis.zrange(pk.due, 0, -1) == [b"later"]


async def test_limit_applies_per_partition(store: Store, hub, redis):
    now = await store.server_time_ms()
    for p in range(hub.partitions):
        await redis.zadd(hub.partition(p).due, {f"x{p}-{i}": now - 10 for i in range(2)})
    result = await store.promote_due(hub, limit=2)
    assert len(result.promoted_due_ms) == 2 * hub.partitions
    assert result.more is True  # every partition filled its batch: call again
    result = await store.promote_due(hub, limit=2)
    assert result.promoted_due_ms == [] and result.more is False


async def test_already_ready_entry_keeps_its_ready_time(store: Store, hub, redis):
    now = await store.server_time_ms()
    pk = hub.for_instance("both")
    await redis.zadd(pk.ready, {"both": now - 5000})
    await redis.zadd(pk.due, {"both": now - 10})
    result = await store.promote_due(hub, limit=10)
    assert result.promoted_due_ms == [now - 10]
    assert await redis.zscore(pk.ready, "both") == now - 5000
    assert await redis.zcard(pk.due) == 0


async def test_exactly_once_with_concurrent_promoters(make_store, key_prefix, hub_name, store, hub):
    now = await store.server_time_ms()
    total = 1000
    ids = [f"c-{i}" for i in range(total)]
    async with store.redis.pipeline(transaction=False) as pipe:
        for i, iid in enumerate(ids):
            pipe.zadd(hub.for_instance(iid).due, {iid: now - 1000 + i % 50})
        await pipe.execute()

    promoters = [make_store(default_partitions=PARTITIONS) for _ in range(4)]
    hubs = [await s.ensure_hub(hub_name) for s in promoters]
    start = asyncio.Event()

    async def run(s: Store, h: keys.HubKeys) -> int:
        await start.wait()
        count = 0
        while True:
            result = await s.promote_due(h, limit=25)
            count += len(result.promoted_due_ms)
            if not result.more:
                return count
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(run(s, h)) for s, h in zip(promoters, hubs)]
    start.set()
    counts = await asyncio.gather(*tasks)
    assert sum(counts) == total
    assert sum(1 for c in counts if c) > 1, f"no race happened: {counts}"
    stats = await store.hub_stats(hub)
    assert stats.due == 0 and stats.ready == total
    ready = set()
    for p, pk in enumerate(hub.all_partitions()):
        members = [m.decode() for m in await store.redis.zrange(pk.ready, 0, -1)]
        assert all(keys.partition_of(m, hub.partitions) == p for m in members)
        ready.update(members)
    assert ready == set(ids)
