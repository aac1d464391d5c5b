"""The wake-up subscription: messages reach whom they concern, and stop() always returns."""
from __future__ import annotations

import asyncio

import pytest

from scheduler.engine.waiters import Waiters
from scheduler.engine.wakeups import Wakeups
from scheduler.store import Store
from scheduler.store.connection import connect


class Recorder:
    """Stands in for the hubs and the dispatcher: records what the wake-ups ask of them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


@pytest.mark.parametrize("steps", range(6))
async def test_stop_returns_whenever_it_is_called(redis_url, key_prefix, steps):
    # On Python 3.11 asyncio.wait_for (used by redis-py around socket I/O) can swallow a
    # cancellation that lands as SUBSCRIBE completes; stop() must cancel until it takes.
    store = Store(connect(redis_url), key_prefix)
    await store.ping()  # a connected connection in the pool: SUBSCRIBE goes out at once
    wakeups = Wakeups(store, Recorder(), Recorder(), Waiters())
    wakeups.start()
    for _ in range(steps):
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(wakeups.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "Wakeups.stop() did not return: the cancellation of its task was lost"
    await store.aclose()


async def test_each_wake_up_reaches_whom_it_concerns(redis_url, key_prefix):
    store = Store(connect(redis_url), key_prefix)
    redis = store.redis
    hubs, dispatcher, waiters = Recorder(), Recorder(), Waiters()
    wakeups = Wakeups(store, hubs, dispatcher, waiters)
    wakeups.start()
    try:
        await asyncio.wait_for(wakeups.connected.wait(), 5)
        with waiters.watch("h1", "id-1") as watch, waiters.watch("h1", "id-2") as other_watch:
            changed, other = watch.event, other_watch.event
            changed.clear()  # set once on (re)connect: anything may have changed meanwhile
            other.clear()
            await redis.publish(store.channel, "h1 status id-1")
            await asyncio.wait_for(changed.wait(), 5)
            assert not other.is_set()
        await redis.publish(store.channel, "h1 due 1234 dt:{h1:5}:due")
        await redis.publish(store.channel, "h2 deleted -")
        await redis.publish(store.channel, "garbage")  # ignored, and the subscription survives it
        await redis.publish(store.channel, "h3 due 99")  # no key: the partition is unknown
        await redis.publish(store.channel, "h1 work dt:{h1:2}:activities")
        await redis.publish(store.channel, "h4 outbox -")
        deadline = asyncio.get_running_loop().time() + 5
        while len(hubs.calls) + len(dispatcher.calls) < 7 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        # first what the subscription's start wakes (wake-ups may have been lost before it listened)
        assert hubs.calls == [("wake_all",), ("due_at", "h1", 1234, 5), ("forget", "h2"), ("due_at", "h3", 99, None),
                              ("outbox_written", "h4")]
        assert dispatcher.calls == [("look_everywhere",), ("work_available", "h1", ("activities", 2))]
    finally:
        await wakeups.stop()
        await store.aclose()
