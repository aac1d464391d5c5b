"""The wake-up subscription: messages reach whom they concern, and stop() always returns."""
from __future__ import annotations

import asyncio

import pytest
import redis.exceptions as rexc

from scheduler.engine.waiters import Waiters
from scheduler.engine.wakeups import Wakeups
from scheduler import errors
from scheduler.store import Store
from scheduler.store.connection import connect
from scheduler.store.pipelining import PipelinedConnection

# the subscription through redis-py (Cluster, embedded) and through the pipelining module's own
# (standalone Redis with the fast connection, as the App runs)
TRANSPORTS = ["redis-py", "fast"]


def make_store(redis_url: str, key_prefix: str, transport: str) -> Store:
    return Store(connect(redis_url), key_prefix, fast=PipelinedConnection(redis_url) if transport == "fast" else None)


class Recorder:
    """Stands in for the hubs and the dispatcher: records what the wake-ups ask of them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("steps", range(6))
async def test_stop_returns_whenever_it_is_called(redis_url, key_prefix, steps, transport):
    # On Python 3.11 asyncio.wait_for (used by redis-py around socket I/O) can swallow a
    # cancellation that lands as SUBSCRIBE completes; stop() must cancel until it takes.
    store = make_store(redis_url, key_prefix, transport)
    await store.ping()  # a connected connection in the pool: SUBSCRIBE goes out at once
    wakeups = Wakeups(store, Recorder(), Recorder(), Waiters())
    wakeups.start()
    for _ in range(steps):
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(wakeups.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "Wakeups.stop() did not return: the cancellation of its task was lost"
    await store.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_wake_up_reaches_whom_it_concerns(redis_url, key_prefix, transport):
    store = make_store(redis_url, key_prefix, transport)
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
        await redis.publish(store.channel, "h4 outbox -")  # any partition
        await redis.publish(store.channel, "h4 outbox dt:{h4:6}:outbox")
        deadline = asyncio.get_running_loop().time() + 5
        while ("outbox_written", "h4", 6) not in hubs.calls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the last one published: the others came before it
        # first what the subscription's start wakes (wake-ups may have been lost before it listened)
        routed = [call for call in hubs.calls if call[0] != "heard"]
        assert routed == [("wake_all",), ("due_at", "h1", 1234, 5), ("forget", "h2"), ("due_at", "h3", 99, None),
                          ("outbox_written", "h4", None), ("outbox_written", "h4", 6)]
        # every wake-up about a hub's work says the hub is active (its idle sweeps look more often)
        assert [call[1] for call in hubs.calls if call[0] == "heard"] == ["h1", "h1", "h3", "h1", "h4", "h4"]
        assert dispatcher.calls == [("look_everywhere",), ("work_available", "h1", ("activities", 2))]
    finally:
        await wakeups.stop()
        await store.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_killed_subscription_ends_with_store_unavailable_and_the_next_one_listens(redis_url, key_prefix,
                                                                                         transport):
    store = make_store(redis_url, key_prefix, transport)
    try:
        first = store.wakeups()
        assert (await anext(first)).kind == "subscribed"
        await store.redis.publish(store.channel, "h status a")
        assert (await asyncio.wait_for(anext(first), 5)).instance_id == "a"
        await store.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        with pytest.raises(errors.StoreUnavailable):
            await asyncio.wait_for(anext(first), 5)
        second = store.wakeups()
        assert (await anext(second)).kind == "subscribed"
        await store.redis.publish(store.channel, "h status b")
        assert (await asyncio.wait_for(anext(second), 5)).instance_id == "b"
        await second.aclose()
    finally:
        await store.aclose()


async def test_a_silent_redis_is_pinged_and_one_that_does_not_answer_ends_the_subscription(redis_url, monkeypatch):
    from scheduler.store import pipelining

    monkeypatch.setattr(pipelining, "HEALTH_SECONDS", 0.05)
    monkeypatch.setattr(pipelining, "REPLY_TIMEOUT", 0.3)
    subscription = await PipelinedConnection(redis_url).subscribe("quiet-channel")
    pushes = subscription._protocol.pushes  # noqa: SLF001 - see the pongs
    pongs = []
    subscription._protocol.pushes = lambda reply: (pongs.append(reply), pushes(reply))  # noqa: SLF001
    listening = asyncio.ensure_future(anext(subscription))
    deadline = asyncio.get_running_loop().time() + 5
    while len(pongs) < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert pongs[:3] == [[b"pong", b""]] * 3 and not listening.done()  # silence is not an error
    subscription._protocol.pushes = lambda reply: None  # noqa: SLF001 - Redis "stops answering"
    with pytest.raises(rexc.TimeoutError, match="did not answer a PING"):
        await asyncio.wait_for(listening, 5)
