"""The Promoter loop over a real store: on time, never early, and only the partitions that are due."""
from __future__ import annotations

import asyncio

from scheduler.store import keys
from scheduler.engine.promoter import Promoter
from scheduler.store import Promotion
from store_helpers import eventually, ids_in_distinct_partitions, new


async def test_promotes_each_entry_at_its_time_calling_only_due_partitions(store, hub):
    promotions: list[Promotion] = []
    calls: list[list[int] | None] = []
    real = store.promote_due

    async def recording(h, limit, partitions=None):
        calls.append(None if partitions is None else sorted(partitions))
        return await real(h, limit, partitions)

    store.promote_due = recording
    ids = ids_in_distinct_partitions(hub, count=2)  # entries in 2 of the hub's partitions
    now = await store.server_time_ms()
    due = {iid: now + 300 + 150 * i for i, iid in enumerate(ids)}
    for iid, ms in due.items():
        await store.create_instance(hub, new(iid, due_ms=ms))

    promoter = Promoter(store, hub, batch=100, on_promoted=promotions.append)
    promoter.start()
    try:
        async def all_promoted() -> bool:
            return sum(len(p.promoted_due_ms) for p in promotions) == len(ids)

        await eventually(all_promoted, timeout=10)
    finally:
        await promoter.stop()

    for p in promotions:
        assert all(p.now_ms >= d for d in p.promoted_due_ms), "promoted before its due time"
    assert sorted(d for p in promotions for d in p.promoted_due_ms) == sorted(due.values())
    assert calls[0] is None  # the first call sweeps every partition
    due_partitions = {keys.partition_of(i, hub.partitions) for i in ids}
    targeted = [c for c in calls if c is not None]
    assert targeted, "after the first sweep the promoter should call only due partitions"
    assert all(set(c) <= due_partitions for c in targeted)


async def test_wake_up_for_an_earlier_entry_sweeps_again(store, hub):
    promotions: list[Promotion] = []
    promoter = Promoter(store, hub, batch=100, on_promoted=promotions.append)
    promoter.start()
    try:
        await asyncio.sleep(0)  # let the first sweep run against the empty hub
        iid = ids_in_distinct_partitions(hub, count=1)[0]
        due_ms = await store.server_time_ms() + 100
        await store.create_instance(hub, new(iid, due_ms=due_ms))
        promoter.due_at(due_ms)  # what the pub/sub wake-up does in the App

        async def promoted() -> bool:
            return any(promotions)

        await eventually(promoted, timeout=0.9)  # well before the 1 s safety sweep
    finally:
        await promoter.stop()
    assert promotions[0].promoted_due_ms == [due_ms]
    assert promotions[0].now_ms >= due_ms


async def test_an_announced_entry_due_after_the_next_step_is_promoted_by_a_targeted_call(store, hub):
    """An entry in a partition the promoter has no head for, due after its next planned step, is
    promoted by a call to its partition (not left to the once-a-second sweep of every partition)."""
    promotions: list[tuple[list[int] | None, Promotion]] = []
    real = store.promote_due

    async def recording(h, limit, partitions=None):
        result = await real(h, limit, partitions)
        if result.promoted_due_ms:
            promotions.append((None if partitions is None else sorted(partitions), result))
        return result

    store.promote_due = recording
    first, second = ids_in_distinct_partitions(hub, count=2)
    now = await store.server_time_ms()
    await store.create_instance(hub, new(first, due_ms=now + 300))
    promoter = Promoter(store, hub, batch=100)
    promoter.start()
    try:
        await eventually(lambda: _planned(promoter), timeout=5)  # it swept and sleeps until +300
        await store.create_instance(hub, new(second, due_ms=now + 450))
        promoter.due_at(now + 450, keys.partition_of(second, hub.partitions))  # as the pub/sub wake-up does

        async def both_promoted() -> bool:
            return sum(len(r.promoted_due_ms) for _, r in promotions) == 2

        await eventually(both_promoted, timeout=5)
    finally:
        await promoter.stop()
    calls, results = zip(*promotions)
    assert all(d <= r.now_ms for r in results for d in r.promoted_due_ms), "promoted before its due time"
    assert calls == ([keys.partition_of(first, hub.partitions)], [keys.partition_of(second, hub.partitions)])


async def _planned(promoter: Promoter) -> bool:
    return promoter._next_due_ms is not None  # noqa: SLF001 - the plan the promoter made after its sweep
