"""Wake-ups across replicas over one Redis pub/sub channel.

Scripts publish ``"<hub> due <ms> <due key>"`` when they add an entry that is due before
everything else in its partition, ``"<hub> status <instance id>"`` when an
instance's status changes, ``"<hub> work <key>"`` when a ready or activity queue stops being empty,
``"<hub> outbox -"`` when messages for other instances were written;
deleting a hub publishes ``"<hub> deleted -"``. Each replica keeps one subscription and routes the
messages to its promoters and to local waiters. Pub/sub is only a wake-up: the
instance hash is the truth, so a missed message costs latency, never
correctness (waiters re-check on a slow timer, promoters sleep at most a second).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator

from redis.asyncio.cluster import RedisCluster

from .keys import queue_of
from .loops import MAX_BACKOFF, MIN_BACKOFF, cancel_and_wait

log = logging.getLogger(__name__)


async def _subscriber_client(redis):
    """A client that can SUBSCRIBE. On a Cluster a PUBLISH reaches every node, so one node will do."""
    if isinstance(redis, RedisCluster):
        import redis.asyncio as aioredis

        await redis.initialize()
        node = redis.get_default_node()
        return aioredis.Redis(host=node.host, port=node.port)
    return redis


class Notifier:
    def __init__(self, redis, channel: str) -> None:
        self._redis = redis
        self.channel = channel
        self.on_due: Callable[[str, int, int | None], None] = lambda hub, ms, partition: None
        self.on_hub_deleted: Callable[[str], None] = lambda hub: None
        self.on_work: Callable[[str, str], None] = lambda hub, key: None
        self.on_outbox: Callable[[str], None] = lambda hub: None
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)

    @contextlib.contextmanager
    def watch(self, hub: str, instance_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the instance's status may have changed (register before reading)."""
        event = asyncio.Event()
        key = (hub, instance_id)
        self._waiters[key].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]

    def _dispatch(self, data: bytes) -> None:
        hub, kind, arg = data.decode("utf-8", "replace").split(" ", 2)
        if kind == "due":
            ms, _, key = arg.partition(" ")
            queue = queue_of(key)
            self.on_due(hub, int(ms), queue[1] if queue else None)
        elif kind == "status":
            self.status_changed(hub, arg)
        elif kind == "deleted":
            self.on_hub_deleted(hub)
        elif kind == "work":
            self.on_work(hub, arg)
        elif kind == "outbox":
            self.on_outbox(hub)

    def status_changed(self, hub: str, instance_id: str) -> None:
        """Wake this replica's waiters on the instance (also called directly by a change made here, which
        then need not wait for its own pub/sub message)."""
        for event in self._waiters.get((hub, instance_id), ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        backoff = MIN_BACKOFF
        while not self._stopping:
            pubsub = None
            try:
                pubsub = (await _subscriber_client(self._redis)).pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self.connected.set()
                backoff = MIN_BACKOFF
                self._wake_all()  # anything may have happened while we were not listening
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        try:
                            self._dispatch(message["data"])
                        except ValueError:
                            log.warning("ignoring malformed wake-up %r", message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect whatever went wrong
                self.connected.clear()
                log.warning("pub/sub subscription lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
