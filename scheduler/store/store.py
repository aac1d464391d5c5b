"""The Store: one method per domain operation over one Redis (standalone, Cluster or embedded).

Each operation is a single round trip: a Lua script from ``lua/`` (named after the
operation; see scripts.py) or a pipeline. Keys come from keys.py; scripts report
expected outcomes as codes, which leave here as :mod:`scheduler.errors` exceptions.
The operations are grouped in mixins by what they are about; this module holds the
connection, the scripts, task hubs, promotion and the operator's statistics.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import redis.exceptions as rexc

from . import keys, notify
from .activities import ActivityOps
from .common import score, unavailable_on_redis_errors
from .connection import Batcher
from .instances import InstanceOps
from .notify import Wakeup
from .orchestrations import OrchestrationOps
from .queries import QueryOps
from .records import HubStats, PartitionStats, Promotion
from .scripts import outcome, source
from .work import WorkOps

SCHEMA_VERSION = 1
_DELETE_BATCH = 500


class Store(InstanceOps, WorkOps, OrchestrationOps, ActivityOps, QueryOps):
    """Domain operations over one Redis; every other layer reaches Redis only through it."""

    SCRIPTS = (("ensure_hub", "promote_due") + InstanceOps.SCRIPTS + OrchestrationOps.SCRIPTS
               + ActivityOps.SCRIPTS + QueryOps.SCRIPTS)

    def __init__(self, redis, prefix: str = "dt", default_partitions: int = 16, fast=None) -> None:
        """``fast``: a :class:`~scheduler.store.pipelining.PipelinedConnection` for the request path of a
        standalone Redis; without one (embedded store, Cluster) requests are batched over ``redis``."""
        self.redis = redis
        self.prefix = prefix
        self.default_partitions = default_partitions
        self.channel = keys.events_channel(prefix)
        self._scripts = {name: redis.register_script(source(name)) for name in self.SCRIPTS}
        self._hubs: dict[str, keys.HubKeys] = {}
        self._execute = fast.execute if fast is not None else Batcher(redis).execute
        self._fast = fast

    async def _eval(self, name: str, hub: str, keys_: list[str], args: list):
        """Run script ``name`` about task hub ``hub`` (its first two arguments: the wake-up channel and
        the hub, see lua/prelude.lua); reload it once if Redis lost it (restart, flush)."""
        script = self._scripts[name]
        command = ("EVALSHA", script.sha, len(keys_), *keys_, self.channel, hub, *args)
        try:
            return await self._execute(*command)
        except rexc.NoScriptError:
            await self.redis.script_load(script.script)
            return await self._execute(*command)

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

    def wakeups(self) -> AsyncIterator[Wakeup]:
        """The wake-ups published on this Redis (see notify.py); ends with StoreUnavailable."""
        return notify.wakeups(self.redis, self.channel)

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
    async def ensure_hub(self, name: str) -> keys.HubKeys:
        """The hub's keys; creates its metadata (fixing its partition count) on first use."""
        cached = self._hubs.get(name)
        if cached is not None:
            return cached
        reply = await self._eval("ensure_hub", name, [keys.meta_key(self.prefix, name)],
                                 [self.default_partitions, SCHEMA_VERSION])
        _, (partitions, _, _) = outcome(reply, name)
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
        return await self.ensure_hub(name)

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

    # -- scheduler worker ------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def promote_due(self, hub: keys.HubKeys, limit: int, partitions: Iterable[int] | None = None) -> Promotion:
        """Promote what is due in the given partitions (default: all) of the hub.

        The per-partition calls are issued together, so they share one round trip."""
        parts = list(range(hub.partitions)) if partitions is None else list(partitions)
        calls = []
        for p in parts:
            pk = hub.partition(p)
            calls.append(self._eval("promote_due", hub.hub, [pk.due, pk.ready], [limit]))
        results = [outcome(reply, hub.hub)[1] for reply in await asyncio.gather(*calls)]
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

