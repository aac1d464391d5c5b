"""The test clock the race explorer moves: with ``Store(clock_key=...)`` the scripts (and
``server_time_ms``) read the epoch ms from that key instead of Redis TIME; without it, nothing changes."""
from __future__ import annotations

import fakeredis

from scheduler.store import NewInstance, Store
from scheduler.store.scripts import source


def new(instance_id: str, due_ms: int) -> NewInstance:
    return NewInstance(instance_id, {"name": "Orch", "execution_id": "e1"}, b"start", due_ms, ())


async def test_the_scripts_read_the_test_clock_and_promote_at_its_time():
    redis = fakeredis.FakeAsyncRedis()
    store = Store(redis, "clk", default_partitions=2, clock_key="clk:clock")
    try:
        await redis.set("clk:clock", 5_000)
        hub = await store.ensure_hub("h")
        assert await store.server_time_ms() == 5_000
        assert await store.create_instance(hub, new("i", 6_000)) == 5_000  # created at the clock's time
        assert (await store.promote_due(hub, 10)).promoted_due_ms == []
        await redis.set("clk:clock", 6_000)
        promotion = await store.promote_due(hub, 10)
        assert promotion.promoted_due_ms == [6_000] and promotion.now_ms == 6_000
    finally:
        await store.aclose()


def test_without_a_clock_key_the_scripts_use_redis_time():
    assert "redis.call('TIME')" in source("promote_due")
    assert "redis.call('TIME')" not in source("promote_due", "k:clock")
    assert "redis.call('GET', 'k:clock')" in source("promote_due", "k:clock")
