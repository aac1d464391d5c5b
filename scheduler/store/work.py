"""Store operations common to every kind of work item (mixed into the Store).

Work waits in a per-partition queue zset (keys.WORK_QUEUES: ``ready`` for orchestrations,
``activities`` for activity items; score = queued since, ms) until a stream claims it;
a claimed item has a member on its partition's ``leases`` zset (keys.lease_member; score
= lease expiry, Redis time) until it is completed, handed back or swept.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable

from .. import protocol
from . import keys
from .common import unavailable_on_redis_errors


class WorkOps:
    """Uses the Store's ``_execute``, ``redis``, ``server_time_ms`` and the sweep of each kind."""

    SCRIPTS: tuple[str, ...] = ()

    @unavailable_on_redis_errors
    async def queued(self, hub: keys.HubKeys, kind: str, partition: int, limit: int) -> list[str]:
        """Up to ``limit`` queued work items of ``kind`` in one partition, longest queued first (to feed
        a claim; another replica may claim any of them first)."""
        if limit <= 0:
            return []
        queue = hub.partition(partition).queue(keys.WORK_QUEUES[kind])
        return [m.decode() for m in await self._execute("ZRANGE", queue, 0, limit - 1)]

    @unavailable_on_redis_errors
    async def queue_lengths(self, hub: keys.HubKeys) -> dict[tuple[str, int], int]:
        """(kind, partition) -> items queued, for every work queue of the hub (one pipelined round trip)."""
        wanted = [(kind, p, hub.partition(p).queue(queue)) for p in range(hub.partitions)
                  for kind, queue in keys.WORK_QUEUES.items()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, _, key in wanted:
                pipe.zcard(key)
            lengths = await pipe.execute()
        return {(kind, partition): length for (kind, partition, _), length in zip(wanted, lengths)}

    @unavailable_on_redis_errors
    async def sweep_expired_leases(self, hub: keys.HubKeys, partition: int | Iterable[int] | None,
                                   limit: int) -> list[str]:
        """Release at most ``limit`` work items of one partition (several; None: of each partition) whose
        lease expired; returns them.

        Two steps, because a script must name each instance's keys: read the expired members
        (Redis time; every partition in one pipelined round trip), then run the sweep script of each,
        which re-checks the expiry atomically, so a lease renewed or released in between is left
        alone. Any replica may run it."""
        if limit <= 0:
            return []
        now_ms = await self.server_time_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(hub.partitions) if partition is None else (
                    (partition,) if isinstance(partition, int) else partition):
                pipe.zrangebyscore(hub.partition(p).leases, "-inf", now_ms, start=0, num=limit)
            members = [member for found in await pipe.execute() for member in found]
        sweeps = {protocol.ORCHESTRATION: self.sweep_orchestration_lease, protocol.ACTIVITY: self.sweep_activity_lease,
                  protocol.ENTITY: self.sweep_entity_lease}
        items = [keys.parse_lease_member(member.decode()) for member in members]
        items = [(kind, item) for kind, item in items if kind in sweeps]
        released = await asyncio.gather(*(sweeps[kind](hub, item) for kind, item in items))
        return [item for (_, item), done in zip(items, released) if done]
