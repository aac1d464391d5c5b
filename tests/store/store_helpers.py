"""Helpers shared by the store suite (imported by module name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from scheduler.store import keys
from scheduler.store import NewInstance

PARTITIONS = 4


def new(instance_id: str, due_ms: int | None = None, replaceable: tuple[str, ...] = (), **fields) -> NewInstance:
    """A NewInstance with a recognisable start event."""
    fields = {"name": "Orch", "execution_id": "e-" + instance_id, **fields}
    return NewInstance(instance_id, fields, f"start:{instance_id}".encode(), due_ms, replaceable)


def ids_in_distinct_partitions(hub: keys.HubKeys, count: int | None = None) -> list[str]:
    """Instance ids, one per partition (all partitions unless ``count``)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < (count or hub.partitions):
        found.setdefault(keys.partition_of(f"inst-{i}", hub.partitions), f"inst-{i}")
        i += 1
    return list(found.values())


async def scan_keys(redis, pattern: str) -> set[str]:
    """Every key matching the glob pattern (SCAN, as an operator would)."""
    return {k.decode() async for k in redis.scan_iter(match=pattern, count=1000)}


async def prefix_keys(redis, prefix: str) -> set[str]:
    return await scan_keys(redis, prefix + ":*")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until it is true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def published(redis, channel: str):
    """Collect the messages published on the channel while the block runs (and until drained)."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    deadline = time.monotonic() + 5.0
    while (await pubsub.get_message(timeout=0.05) or {}).get("type") != "subscribe":
        assert time.monotonic() < deadline, "SUBSCRIBE was not confirmed"
    messages: list[str] = []

    async def drain_until(predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(messages):
            assert time.monotonic() < deadline, f"expected messages not published; got {messages}"
            message = await pubsub.get_message(timeout=0.05)
            if message and message["type"] == "message":
                messages.append(message["data"].decode())

    try:
        yield messages, drain_until
    finally:
        await pubsub.aclose()


async def fence(redis, channel: str, key: str, text: str) -> None:
    """Publish ``text`` from the node that holds ``key``: in a Cluster it reaches the subscriber after
    everything that node published before (one cluster bus link, in order)."""
    await redis.eval("return redis.call('PUBLISH', ARGV[1], ARGV[2])", 1, key, channel, text)


async def during(redis, channel: str, key: str, action):
    """(the messages published while ``action()`` runs, its result): exactly those between two fences
    published from the node of ``key``, the node that runs the scripts of its partition."""
    async with published(redis, channel) as (messages, drain_until):
        await fence(redis, channel, key, "fence:before")
        await drain_until(lambda m: "fence:before" in m)
        first = messages.index("fence:before") + 1
        result = await action()
        await fence(redis, channel, key, "fence:after")
        await drain_until(lambda m: "fence:after" in m)
    return messages[first:messages.index("fence:after")], result
