"""The store: the only code that knows Redis.

One method per domain operation, each a single round trip (a Lua script from
``lua/`` or a pipeline). Keys come from :mod:`scheduler.keys`; expected outcomes
come back as codes and leave here as :mod:`scheduler.errors` exceptions.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.exceptions as rexc

from . import errors, keys
from .batching import Batcher
from .store_common import load_lua, score, unavailable_on_redis_errors
from .store_activities import ActivityOps
from .store_dispatch import DispatchOps
from .store_lifecycle import LifecycleOps
from .store_queries import QueryOps

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_DELETE_BATCH = 500


@dataclass(frozen=True)
class NewInstance:
    """What StartInstance writes: the instance hash fields, its first event and where it goes."""

    instance_id: str
    fields: dict[str, str | bytes]
    start_event: bytes
    due_ms: int | None = None  # None: ready now
    replaceable: tuple[str, ...] = ()
    same_is_done: bool = False  # an existing instance of the same execution id is this creation, done before


@dataclass(frozen=True)
class Promotion:
    """Result of one promote call over a hub's partitions."""

    now_ms: int
    next_due_ms: int | None
    promoted_due_ms: list[int]
    more: bool  # a partition filled its batch: call again at once
    heads: dict[int, int | None] = field(default_factory=dict)  # next due ms of each partition called


@dataclass
class PartitionStats:
    statuses: dict[str, int] = field(default_factory=dict)
    due: int = 0
    next_due_ms: int | None = None
    ready: int = 0
    oldest_ready_ms: int | None = None


@dataclass
class HubStats:
    hub: str
    partitions: int
    now_ms: int
    per_partition: list[PartitionStats]

    @property
    def statuses(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.per_partition:
            for status, count in p.statuses.items():
                total[status] = total.get(status, 0) + count
        return {s: n for s, n in sorted(total.items()) if n}

    @property
    def due(self) -> int:
        return sum(p.due for p in self.per_partition)

    @property
    def next_due_ms(self) -> int | None:
        return min((p.next_due_ms for p in self.per_partition if p.next_due_ms is not None), default=None)

    @property
    def ready(self) -> int:
        return sum(p.ready for p in self.per_partition)

    @property
    def oldest_ready_ms(self) -> int | None:
        return min((p.oldest_ready_ms for p in self.per_partition if p.oldest_ready_ms is not None), default=None)


class Store(LifecycleOps, QueryOps, DispatchOps, ActivityOps):
    """Domain operations over one Redis (standalone, Cluster or embedded)."""

    SCRIPTS = (("create_instance", "get_instance", "promote_due", "ensure_hub")
               + LifecycleOps.SCRIPTS + QueryOps.SCRIPTS + DispatchOps.SCRIPTS + ActivityOps.SCRIPTS)

    def __init__(self, redis, prefix: str = "dt", default_partitions: int = 16, fast=None) -> None:
        """``fast``: a :class:`~scheduler.pipelining.PipelinedConnection` for the request path of a
        standalone Redis; without one (embedded store, Cluster) requests are batched over ``redis``."""
        self.redis = redis
        self.prefix = prefix
        self.default_partitions = default_partitions
        self.channel = keys.events_channel(prefix)
        self._scripts = {name: redis.register_script(load_lua(name)) for name in self.SCRIPTS}
        self._hubs: dict[str, keys.HubKeys] = {}
        self._execute = fast.execute if fast is not None else Batcher(redis).execute
        self._fast = fast

    async def _eval(self, name: str, keys_: list[str], args: list):
        """Run a registered script through the batcher; reload it once if Redis lost it (restart, flush)."""
        script = self._scripts[name]
        try:
            return await self._execute("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except rexc.NoScriptError:
            await self.redis.script_load(script.script)
            return await self._execute("EVALSHA", script.sha, len(keys_), *keys_, *args)

    @unavailable_on_redis_errors
    async def load_scripts(self) -> None:
        """Load every script once at start-up; fail fast naming the script that Redis rejects."""
        for name, script in self._scripts.items():
            try:
                await self.redis.script_load(script.script)
            except rexc.ResponseError as exc:
                raise RuntimeError(f"Redis rejected Lua script {name}.lua: {exc}") from exc

    async def aclose(self) -> None:
        if self._fast is not None:
            await self._fast.aclose()
        await self.redis.aclose()

    @unavailable_on_redis_errors
    async def ping(self) -> None:
        await self.redis.ping()

    @unavailable_on_redis_errors
    async def server_time_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return seconds * 1000 + micros // 1000

    # -- task hubs -------------------------------------------------------------------------

    def cached_hub(self, name: str) -> keys.HubKeys | None:
        """The hub's keys if this replica has used the hub before (no Redis call)."""
        return self._hubs.get(name)

    @unavailable_on_redis_errors
    async def hub(self, name: str) -> keys.HubKeys:
        """The hub's keys; creates its metadata (fixing its partition count) on first use."""
        cached = self._hubs.get(name)
        if cached is not None:
            return cached
        meta = keys.meta_key(self.prefix, name)
        partitions, _, _ = await self._scripts["ensure_hub"](keys=[meta], args=[self.default_partitions, SCHEMA_VERSION])
        # The registry lets every replica's promoter find the hub. It is a separate,
        # idempotent single-key write (another slot on a Cluster): repeating it is harmless.
        await self.redis.sadd(keys.hubs_key(self.prefix), name)
        hub = keys.HubKeys(self.prefix, name, int(partitions))
        self._hubs[name] = hub
        return hub

    @unavailable_on_redis_errors
    async def find_hub(self, name: str) -> keys.HubKeys | None:
        """The hub's keys if the hub exists, without creating it (for read-only calls)."""
        cached = self._hubs.get(name)
        if cached is not None:
            return cached
        partitions = await self.redis.hget(keys.meta_key(self.prefix, name), "partitions")
        if partitions is None:
            return None
        hub = keys.HubKeys(self.prefix, name, int(partitions))
        self._hubs[name] = hub
        return hub

    def forget_hub(self, name: str) -> None:
        """Drop a cached hub (it was deleted): the next use looks it up or creates it again."""
        self._hubs.pop(name, None)

    @unavailable_on_redis_errors
    async def revalidate_hubs(self) -> list[str]:
        """Forget cached hubs whose metadata is gone (deleted elsewhere, Redis data lost); returns them."""
        names = list(self._hubs)
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(keys.meta_key(self.prefix, name))
            present = await pipe.execute()
        gone = [name for name, there in zip(names, present) if not there]
        for name in gone:
            self.forget_hub(name)
        return gone

    @unavailable_on_redis_errors
    async def known_hubs(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(keys.hubs_key(self.prefix)))

    async def create_task_hub(self, name: str, recreate_if_exists: bool) -> keys.HubKeys:
        if recreate_if_exists:
            await self.delete_task_hub(name)
        return await self.hub(name)

    @unavailable_on_redis_errors
    async def delete_task_hub(self, name: str) -> int:
        """Remove every key of the hub in bounded batches; returns how many keys went."""
        self._hubs.pop(name, None)
        hub = keys.HubKeys(self.prefix, name, 0)
        deleted = 0
        for pattern in hub.scan_patterns():
            batch: list[bytes] = []
            async for key in self.redis.scan_iter(match=pattern, count=_DELETE_BATCH):
                if hub.owns(key.decode("utf-8", "replace")):
                    batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    deleted += await self.redis.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self.redis.unlink(*batch)
        await self.redis.srem(keys.hubs_key(self.prefix), name)
        await self.redis.publish(self.channel, f"{name} deleted -")
        return deleted

    # -- instances -------------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def create_instance(self, hub: keys.HubKeys, new: NewInstance) -> int:
        """Write a new instance (see create_instance.lua); returns its creation time in ms."""
        pk = hub.for_instance(new.instance_id)
        iid = new.instance_id
        args: list = [iid, "" if new.due_ms is None else new.due_ms, new.start_event,
                      " ".join(new.replaceable), self.channel, hub.hub, "1" if new.same_is_done else "0",
                      new.fields.get("execution_id", "")]
        for name, value in new.fields.items():
            args.append(name)
            args.append(value)
        code, value = await self._eval(
            "create_instance",
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.due, pk.ready, pk.by_created, pk.stats,
             pk.timers(iid), pk.delivered(iid)], args)
        if code == errors.EXISTS:
            raise errors.InstanceExists(iid, value.decode())
        if code == errors.DONE_BEFORE:
            raise errors.InstanceExists(iid, value.decode(), done_before=True)
        return int(value)

    @unavailable_on_redis_errors
    async def get_instance(self, hub: keys.HubKeys, instance_id: str) -> dict[str, bytes] | None:
        """The instance hash (field name -> raw value) plus ``start_event``, the serialized
        ExecutionStarted event of its current execution (input, tags); None if there is no such instance."""
        pk = hub.for_instance(instance_id)
        reply = await self._eval("get_instance", [pk.instance(instance_id), pk.inbox(instance_id),
                                                  pk.history(instance_id)], [])
        if not reply:
            return None
        raw, event = reply
        h = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
        if event:
            h["start_event"] = event
        return h

    # -- scheduler worker ------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def promote_due(self, hub: keys.HubKeys, limit: int, partitions: Iterable[int] | None = None) -> Promotion:
        """Promote what is due in the given partitions (default: all) of the hub.

        The per-partition calls are issued together, so they share one round trip."""
        parts = list(range(hub.partitions)) if partitions is None else list(partitions)
        calls = []
        for p in parts:
            pk = hub.partition(p)
            calls.append(self._eval("promote_due", [pk.due, pk.ready], [limit, self.channel, hub.hub]))
        results = await asyncio.gather(*calls)
        heads = {p: (score(r[1]) if score(r[1]) >= 0 else None) for p, r in zip(parts, results)}
        known = [h for h in heads.values() if h is not None]
        return Promotion(
            now_ms=max(int(r[0]) for r in results),
            next_due_ms=min(known) if known else None,
            promoted_due_ms=[score(s) for r in results for s in r[2:]],
            more=any(len(r) - 2 >= limit for r in results),
            heads=heads,
        )

    # -- operator view ---------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def hub_stats(self, hub: keys.HubKeys) -> HubStats:
        now_ms = await self.server_time_ms()  # on its own: a Cluster pipeline refuses TIME
        async with self.redis.pipeline(transaction=False) as pipe:
            for pk in hub.all_partitions():
                pipe.hgetall(pk.stats)
                pipe.zcard(pk.due)
                pipe.zrange(pk.due, 0, 0, withscores=True)
                pipe.zcard(pk.ready)
                pipe.zrange(pk.ready, 0, 0, withscores=True)
            results = await pipe.execute()
        parts = []
        for i in range(hub.partitions):
            statuses, due, due_head, ready, ready_head = results[5 * i: 5 * i + 5]
            parts.append(PartitionStats(
                statuses={k.decode(): int(v) for k, v in statuses.items()},
                due=due, next_due_ms=score(due_head[0][1]) if due_head else None,
                ready=ready, oldest_ready_ms=score(ready_head[0][1]) if ready_head else None))
        return HubStats(hub.hub, hub.partitions, now_ms, parts)
