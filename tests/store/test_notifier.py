"""The pub/sub notifier: wake-ups reach watchers, and stop() always returns."""
from __future__ import annotations

import asyncio

import pytest

from scheduler.notify import Notifier
from scheduler.redis_conn import connect


@pytest.mark.parametrize("steps", range(6))
async def test_stop_returns_whenever_it_is_called(redis_url, key_prefix, steps):
    # On Python 3.11 asyncio.wait_for (used by redis-py around socket I/O) can swallow a
    # cancellation that lands as SUBSCRIBE completes; stop() must cancel until it takes.
    redis = connect(redis_url)
    await redis.ping()  # a connected connection in the pool: SUBSCRIBE goes out at once
    notifier = Notifier(redis, f"{key_prefix}:events")
    notifier.start()
    for _ in range(steps):
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(notifier.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "Notifier.stop() did not return: the cancellation of its task was lost"
    await redis.aclose()


async def test_status_and_due_messages_reach_their_listeners(redis_url, key_prefix):
    redis = connect(redis_url)
    channel = f"{key_prefix}:events"
    notifier = Notifier(redis, channel)
    dues: list[tuple[str, int, int | None]] = []
    deleted: list[str] = []
    notifier.on_due = lambda hub, ms, partition: dues.append((hub, ms, partition))
    notifier.on_hub_deleted = deleted.append
    notifier.start()
    try:
        await asyncio.wait_for(notifier.connected.wait(), 5)
        with notifier.watch("h1", "id-1") as changed, notifier.watch("h1", "id-2") as other:
            changed.clear()  # set once on (re)connect: anything may have changed meanwhile
            other.clear()
            await redis.publish(channel, "h1 status id-1")
            await asyncio.wait_for(changed.wait(), 5)
            assert not other.is_set()
        await redis.publish(channel, "h1 due 1234 dt:{h1:5}:due")
        await redis.publish(channel, "h2 deleted -")
        await redis.publish(channel, "garbage")  # ignored, and the subscription survives it
        await redis.publish(channel, "h3 due 99")  # no key: the partition is unknown
        deadline = asyncio.get_running_loop().time() + 5
        while len(dues) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert dues == [("h1", 1234, 5), ("h3", 99, None)]
        assert deleted == ["h2"]
    finally:
        await notifier.stop()
        await redis.aclose()
