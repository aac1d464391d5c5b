"""Wake-ups across replicas: the messages scripts publish on one Redis pub/sub channel, parsed.

Scripts publish ``"<hub> due <ms> <due key>"`` when they add an entry that is due before
everything else in its partition, ``"<hub> status <instance id>"`` when an instance's
status changes, ``"<hub> work <queue key>"`` when a work queue stops being empty and
``"<hub> outbox <outbox key>"`` when messages for other instances were written; deleting a hub
publishes ``"<hub> deleted -"``. The engine (engine/wakeups.py) keeps one subscription per
replica and routes them. Pub/sub is only a wake-up: a missed message costs latency, never
correctness.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import NamedTuple

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from .. import errors
from .connection import Gated
from .keys import queue_of
from .pipelining import PipelinedConnection

log = logging.getLogger(__name__)

KINDS = ("due", "status", "work", "outbox", "deleted")


class Wakeup(NamedTuple):
    """One parsed wake-up; kind "subscribed" means: listening from now on (anything may have
    happened before)."""

    hub: str
    kind: str
    instance_id: str = ""  # "status": whose status changed
    due_ms: int | None = None  # "due": when the new entry is due
    queue: tuple[str, int] | None = None  # "due", "work", "outbox": (queue name, partition) it names, if it does


SUBSCRIBED = Wakeup("", "subscribed")


def parse(data: bytes) -> Wakeup:
    """The wake-up of a published message; ValueError if it is not one."""
    hub, kind, arg = data.decode("utf-8", "replace").split(" ", 2)
    if kind not in KINDS:
        raise ValueError(f"unknown wake-up kind {kind!r}")
    if kind == "due":
        ms, _, key = arg.partition(" ")
        return Wakeup(hub, kind, due_ms=int(ms), queue=queue_of(key))
    if kind in ("work", "outbox"):
        return Wakeup(hub, kind, queue=queue_of(arg))
    return Wakeup(hub, kind, instance_id=arg if kind == "status" else "")


async def wakeups(redis, channel: str, fast: PipelinedConnection | None = None) -> AsyncIterator[Wakeup]:
    """The wake-ups published on ``channel``: first SUBSCRIBED, then each message as it comes.
    Ends with StoreUnavailable when the subscription is lost. On a Cluster a PUBLISH reaches
    every node, so one node will do. With ``fast`` (a standalone Redis), through a subscription
    of its own (pipelining.Subscription: a fraction of redis-py's Python per message, which every
    replica pays for every wake-up any replica publishes)."""
    if fast is not None:
        async for wakeup in _fast_wakeups(fast, channel):
            yield wakeup
        return
    if isinstance(redis, Gated):
        redis = redis.client
    pubsub = None
    try:
        if isinstance(redis, RedisCluster):  # one node, through its own connection settings (TLS, ACL user)
            await redis.initialize()
            pubsub = redis.pubsub(node=redis.get_default_node(), ignore_subscribe_messages=True)
        else:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        yield SUBSCRIBED
        async for message in pubsub.listen():
            if message and message.get("type") == "message":
                wakeup = _parsed(message["data"])
                if wakeup is not None:
                    yield wakeup
    except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
        raise errors.StoreUnavailable(f"pub/sub subscription lost: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()


async def _fast_wakeups(fast: PipelinedConnection, channel: str) -> AsyncIterator[Wakeup]:
    subscription = None
    try:
        subscription = await fast.subscribe(channel)
        yield SUBSCRIBED
        async for data in subscription:
            wakeup = _parsed(data)
            if wakeup is not None:
                yield wakeup
    except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
        raise errors.StoreUnavailable(f"pub/sub subscription lost: {exc}") from exc
    finally:
        if subscription is not None:
            subscription.close()


def _parsed(data: bytes) -> Wakeup | None:
    try:
        return parse(data)
    except ValueError:
        log.warning("ignoring malformed wake-up %r", data)
        return None
