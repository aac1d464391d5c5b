"""The Store: one method per domain operation over one Redis (standalone, Cluster or embedded).

Each operation is a single round trip: a Lua script from ``lua/`` (named after the
operation; see scripts.py) or a pipeline. Keys come from keys.py; scripts report
expected outcomes as codes, which leave here as :mod:`scheduler.errors` exceptions.
The operations are grouped in mixins by what they are about; this module holds the
connection, the scripts, task hubs, promotion and the operator's statistics.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable

import redis.exceptions as rexc

from ..config import Limits
from .. import errors
from . import keys, notify
from .activities import ActivityOps
from .common import score, unavailable_on_redis_errors
from .connection import Batcher
from .dataset import DatasetOps
from .entities import EntityOps
from .instances import InstanceOps
from .notify import Wakeup
from .orchestrations import OrchestrationOps
from .queries import QueryOps
from .records import HubStats, PartitionStats, Promotion
from .keys import SCHEMA_VERSION
from .scripts import Code, outcome, source
from .work import WorkOps

_DELETE_BATCH = 500
# A deleted hub's partitions keep their tombstone generation this long (writers that still knew the
# hub have long noticed by then: every replica revalidates its hubs every few seconds).
_TOMBSTONE_MS = 24 * 3600 * 1000


class Store(InstanceOps, WorkOps, OrchestrationOps, ActivityOps, EntityOps, QueryOps, DatasetOps):
    """Domain operations over one Redis; every other layer reaches Redis only through it."""

    SCRIPTS = (("register_hub", "ensure_hub", "mark_hub_deleting", "retire_partition", "promote_due") + InstanceOps.SCRIPTS + OrchestrationOps.SCRIPTS
               + ActivityOps.SCRIPTS + EntityOps.SCRIPTS + QueryOps.SCRIPTS)

    def __init__(self, redis, prefix: str = "dt", default_partitions: int = 16, fast=None,
                 limits: Limits = Limits(), clock_key: str | None = None, max_hubs: int = 1000,
                 replica_acks: int = 0, replica_ack_timeout_ms: int = 1000, replica_name: str = "") -> None:
        """``fast``: a :class:`~scheduler.store.pipelining.PipelinedConnection` for the request path of a
        standalone Redis; without one (embedded store, Cluster) requests are batched over ``redis``.
        ``limits``: the bounds of one instance that the scripts check when it grows.
        ``clock_key`` (tests only): the scripts' clock and :meth:`server_time_ms` read the epoch ms from
        this key, which the test moves, instead of Redis TIME. The key is undeclared in the scripts'
        KEYS, so only on a standalone Redis or fakeredis, never on a Cluster.
        ``replica_acks``: every script that writes is answered once that many replicas have its write
        (Redis WAIT, ``replica_ack_timeout_ms``); NotReplicated when fewer did. ``replica_name``: how this
        replica reports itself when it finds the dataset lost (dataset.py)."""
        self.redis = redis
        self.prefix = prefix
        self.default_partitions = default_partitions
        self.limits = limits
        self.max_hubs = max_hubs  # the most task hubs the registry admits (see register_hub.lua)
        self.channel = keys.events_channel(prefix)
        self.clock_key = clock_key
        self._scripts = {name: redis.register_script(source(name, clock_key)) for name in self.SCRIPTS}
        self._hubs: dict[str, keys.HubKeys] = {}
        self._fast = fast
        if fast is not None:
            fast.replica_acks, fast.replica_ack_timeout_ms = replica_acks, replica_ack_timeout_ms
            self._execute, self._execute_write = fast.execute, fast.execute_replicated
        else:
            batcher = Batcher(redis, replica_acks=replica_acks, replica_ack_timeout_ms=replica_ack_timeout_ms)
            self._execute, self._execute_write = batcher.execute, batcher.execute_replicated
        self.replica_name = replica_name

    async def _run(self, name: str, hub: str, generation: int, keys_: list[str], args: list, write: bool = True):
        """Run script ``name`` (its first arguments: the wake-up channel, the task hub and its
        generation, see lua/prelude.lua); reload it once if Redis lost it (restart, flush). A script
        that may write is refused while the dataset is lost, and answered once the replicas asked for
        have its write (``replica_acks``)."""
        script = self._scripts[name]
        command = ("EVALSHA", script.sha, len(keys_), *keys_, self.channel, hub, generation, *args)
        execute = self._execute
        if write:
            self.refuse_if_lost()
            execute = self._execute_write
        try:
            return await execute(*command)
        except rexc.NoScriptError:
            await self.redis.script_load(script.script)
            return await execute(*command)

    def _eval(self, name: str, hub: keys.HubKeys, keys_: list[str], args: list) -> Awaitable:
        """Run a script that only reads the hub's keys (or, as the relay's outbox turn, writes nothing a
        caller is answered for)."""
        return self._run(name, hub.hub, hub.generation, keys_, args, write=False)

    def _write(self, name: str, hub: keys.HubKeys, pk: keys.PartitionKeys, keys_: list[str], args: list) -> Awaitable:
        """Run a script that writes to partition ``pk``: its first key is the partition's generation key,
        which the script checks first (HUB_GONE if the hub was deleted since ``hub`` was read)."""
        return self._run(name, hub.hub, hub.generation, [pk.generation, *keys_], args)

    def _outcome(self, reply: list, subject: str, *expected: Code) -> tuple[Code, list]:
        return outcome(reply, subject, *expected, limits=self.limits)

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
        return notify.wakeups(self.redis, self.channel, self._fast)

    @unavailable_on_redis_errors
    async def ping(self) -> None:
        """Redis answers through every connection requests use (the pipelined one, the pool)."""
        await self._execute("PING")
        await self.redis.ping()

    @unavailable_on_redis_errors
    async def server_time_ms(self) -> int:
        if self.clock_key is not None:  # a test's clock (see __init__)
            return int(await self.redis.get(self.clock_key))
        seconds, micros = await self.redis.time()
        return seconds * 1000 + micros // 1000

    # -- task hubs -------------------------------------------------------------------------
    # A hub's metadata fixes its partition count and its generation (a number from the hub
    # generation counter). Every script that writes to a partition carries the generation its
    # caller knows and is refused once the partition belongs to a newer one (HubGone), so a hub
    # deleted on one replica cannot be written to by another that still knows the old one.

    def cached_hub(self, name: str) -> keys.HubKeys | None:
        """The hub's keys if this replica has used the hub before (no Redis call)."""
        return self._hubs.get(name)

    @unavailable_on_redis_errors
    async def ensure_hub(self, name: str) -> keys.HubKeys:
        """The hub's keys; creates its metadata (fixing its partition count and generation) on first
        use. HubDeleting while the hub is being deleted."""
        hub = await self.find_hub(name)
        if hub is not None:
            return hub
        # The registry (which every replica reads to find the hubs it serves) admits the hub first,
        # within --max-task-hubs (TooManyTaskHubs, nothing written). It lives in another slot than the
        # hub's metadata on a Cluster, hence two scripts; a name admitted whose metadata never came
        # (the replica died in between) is dropped by the hubs' refresh (engine/hubs.py).
        self._outcome(await self._run("register_hub", name, 0, [keys.hubs_key(self.prefix)], [self.max_hubs]), name)
        # (through the request path: the WAIT after ensure_hub covers this write too)
        generation = await self._execute("INCR", keys.generations_key(self.prefix))
        reply = await self._run("ensure_hub", name, generation, [keys.meta_key(self.prefix, name)],
                                [self.default_partitions, SCHEMA_VERSION])
        _, (partitions, _, generation, _, schema) = self._outcome(reply, name)
        return self._cache(keys.HubKeys(self.prefix, name, int(partitions), int(generation), int(schema)))

    @unavailable_on_redis_errors
    async def find_hub(self, name: str) -> keys.HubKeys | None:
        """The hub's keys if the hub exists, without creating it (for calls that only read); None
        for a hub that does not exist. HubDeleting while the hub is being deleted."""
        cached = self._hubs.get(name)
        if cached is not None:
            return cached
        partitions, generation, deleting, schema = await self.redis.hmget(
            keys.meta_key(self.prefix, name), "partitions", "generation", "deleting", "schema")
        if deleting is not None:
            raise errors.HubDeleting(name)
        if partitions is None:
            return None
        return self._cache(keys.HubKeys(self.prefix, name, int(partitions), int(generation or 0), int(schema or 1)))

    def _cache(self, hub: keys.HubKeys) -> keys.HubKeys:
        self._hubs[hub.hub] = hub
        return hub

    def forget_hub(self, name: str) -> None:
        """Drop a cached hub (it was deleted): the next use looks it up or creates it again."""
        self._hubs.pop(name, None)

    @unavailable_on_redis_errors
    async def revalidate_hubs(self) -> list[str]:
        """Forget cached hubs that are gone or being deleted, or whose generation changed (deleted and
        created again elsewhere, Redis data lost); returns them."""
        names = list(self._hubs)
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(keys.meta_key(self.prefix, name), "generation", "deleting")
            metas = await pipe.execute()
        gone = [name for name, (generation, deleting) in zip(names, metas)
                if generation is None or deleting is not None or int(generation) != self._hubs[name].generation]
        for name in gone:
            self.forget_hub(name)
        return gone

    @unavailable_on_redis_errors
    async def hub_states(self, names: list[str]) -> dict[str, dict[str, bytes]]:
        """What the metadata of these hubs holds now (one pipelined round trip): generation, deleting,
        deleting_ms, retention_seconds (absent fields left out; an empty dict: no metadata)."""
        fields = ("generation", "deleting", "deleting_ms", "retention_seconds")
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(keys.meta_key(self.prefix, name), *fields)
            metas = await pipe.execute()
        return {name: {f: v for f, v in zip(fields, values) if v is not None} for name, values in zip(names, metas)}

    @unavailable_on_redis_errors
    async def unregister_hubs(self, names: list[str]) -> None:
        """Drop names from the registry whose hub was never made (see ensure_hub)."""
        self.refuse_if_lost()
        if names:
            await self.redis.srem(keys.hubs_key(self.prefix), *names)

    @unavailable_on_redis_errors
    async def register_hubs(self, names: list[str]) -> None:
        """Keep hubs in the registry (idempotent; heals a registration lost to a concurrent deletion)."""
        self.refuse_if_lost()
        if names:
            await self.redis.sadd(keys.hubs_key(self.prefix), *names)

    @unavailable_on_redis_errors
    async def known_hubs(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(keys.hubs_key(self.prefix)))

    async def create_task_hub(self, name: str, recreate_if_exists: bool) -> keys.HubKeys:
        if recreate_if_exists:
            await self.delete_task_hub(name)
        return await self.ensure_hub(name)

    @unavailable_on_redis_errors
    async def delete_task_hub(self, name: str) -> int:
        """Remove every key of the hub; returns how many keys went. Atomic in effect against writers
        on any replica: (1) the hub is marked as being deleted (it cannot be used or created again
        meanwhile), (2) every partition is sealed with a tombstone generation (from then on no
        write of the hub's generation lands), (3) its keys are removed in bounded batches, (4) its
        metadata goes. Deleting a hub whose deletion a replica left unfinished finishes it."""
        self.refuse_if_lost()
        self._hubs.pop(name, None)
        meta = keys.meta_key(self.prefix, name)
        tombstone = await self.redis.incr(keys.generations_key(self.prefix))
        code, values = self._outcome(await self._run("mark_hub_deleting", name, tombstone, [meta], []), name,
                                     Code.NOT_FOUND)
        if code is Code.NOT_FOUND:
            return 0
        partitions, tombstone = int(values[0]), int(values[1])
        hub = keys.HubKeys(self.prefix, name, partitions, tombstone)
        for p in range(partitions):
            pk = hub.partition(p)
            self._outcome(await self._run("retire_partition", name, tombstone, [pk.generation], [_TOMBSTONE_MS]),
                          name)
        deleted = 0
        for pattern in hub.scan_patterns():
            batch: list[bytes] = []
            async for key in self.redis.scan_iter(match=pattern, count=_DELETE_BATCH):
                text = key.decode("utf-8", "replace")
                if hub.owns(text) and text != meta and not text.endswith("}:generation"):
                    batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    deleted += await self.redis.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self.redis.unlink(*batch)
        deleted += await self.redis.unlink(meta)
        # A hub created again right now registers again: every replica re-registers the hubs it serves.
        await self.redis.srem(keys.hubs_key(self.prefix), name)
        await self.redis.publish(self.channel, f"{name} {notify.DELETED} -")
        return deleted

    @unavailable_on_redis_errors
    async def unfinished_deletions(self, older_than_ms: int) -> list[str]:
        """Registered hubs marked as being deleted for longer than ``older_than_ms`` (their replica
        died mid-way): any replica may finish them."""
        names = await self.known_hubs()
        if not names:
            return []
        now_ms = await self.server_time_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(keys.meta_key(self.prefix, name), "deleting_ms")
            since = await pipe.execute()
        return [name for name, ms in zip(names, since) if ms is not None and now_ms - int(ms) > older_than_ms]

    # -- scheduler worker ------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def promote_due(self, hub: keys.HubKeys, limit: int, partitions: Iterable[int] | None = None,
                          members: bool = False) -> Promotion:
        """Promote what is due in the given partitions (default: all) of the hub; with ``members``, say
        which entries moved (``Promotion.promoted``).

        The per-partition calls are issued together, so they share one round trip."""
        parts = list(range(hub.partitions)) if partitions is None else list(partitions)
        calls = []
        for p in parts:
            pk = hub.partition(p)
            calls.append(self._write("promote_due", hub, pk, [pk.due, pk.ready, pk.entities],
                                     [limit, "1"] if members else [limit]))
        results = [self._outcome(reply, hub.hub)[1] for reply in await asyncio.gather(*calls)]
        heads = {p: (score(r[1]) if score(r[1]) >= 0 else None) for p, r in zip(parts, results)}
        known = [h for h in heads.values() if h is not None]
        step = 2 if members else 1
        return Promotion(
            now_ms=max(int(r[0]) for r in results),
            next_due_ms=min(known) if known else None,
            promoted_due_ms=[score(s) for r in results for s in r[2::step]],
            more=any((len(r) - 2) // step >= limit for r in results),
            heads=heads,
            promoted=[(m.decode(), score(s)) for r in results for s, m in zip(r[2::2], r[3::2])] if members else [],
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
                pipe.llen(pk.outbox)
            results = await pipe.execute()
        parts = []
        for i in range(hub.partitions):
            statuses, due, due_head, ready, ready_head, outbox = results[6 * i: 6 * i + 6]
            parts.append(PartitionStats(
                statuses={k.decode(): int(v) for k, v in statuses.items()},
                due=due, next_due_ms=score(due_head[0][1]) if due_head else None,
                ready=ready, oldest_ready_ms=score(ready_head[0][1]) if ready_head else None, outbox=outbox))
        return HubStats(hub.hub, hub.partitions, now_ms, parts)

