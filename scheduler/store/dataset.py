"""The dataset's identity: a Redis that comes back emptied or replaced is said loudly, never used silently.

At its first start on a Redis a replica writes a random id to ``<prefix>:dataset`` (only if none is
there) and remembers the id it finds. It reads the key again every second, and every new pipelined
connection (a reconnection, a failover) must find it before anything is written. A missing key or
another id (Redis emptied, replaced, failed over to a replica that never had it) makes the replica
refuse writes (:class:`~scheduler.errors.DatasetLost`) until an operator adopts what Redis holds
(``dt-scheduler dataset adopt``: a new id marked adopted, which every replica then takes), or until
the id it knows answers again: a Cluster client routed for a moment to a restarted, empty master that
has not yet learnt it was failed over, a view that heals by itself (an emptied Redis never shows the
old id again; a new one is another id). A replica that finds an id it does not know, not marked
adopted, takes it only at its first look: it cannot tell a new dataset from a replaced one.

On a Redis Cluster the marker keys are one per master at the dataset's creation: the identity hash
lists hash tags, one in a slot of each master then, and the same id is written under each
(``<prefix>:dataset:{tag}``); a slot moved by resharding takes its key with it. A master added later
holds no marker.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from redis.crc import key_slot

from .. import errors
from . import keys
from .common import unavailable_on_redis_errors
from .connection import Gated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetState:
    """What this replica knows of the dataset: its id (None before the first look) and whether Redis
    lost it (``lost`` says why)."""

    id: str | None
    lost: str | None = None


def tag_for_slot(slot: int) -> str:
    """A short hash tag whose key slot is ``slot``."""
    n = 0
    while key_slot(f"d{n}".encode()) != slot:
        n += 1
    return f"d{n}"


class DatasetOps:
    """The identity part of :class:`~scheduler.store.Store` (``self.redis``, ``self.prefix``, ``self._fast``)."""

    dataset_id: str | None = None
    dataset_lost: str | None = None  # why writes are refused, or None
    replica_name: str = ""

    def _identity_keys(self, tags: list[str]) -> list[str]:
        return [f"{keys.dataset_key(self.prefix)}:{{{tag}}}" for tag in tags]

    async def _cluster_tags(self) -> list[str]:
        """One hash tag in a slot of each master of a Cluster (none on one Redis)."""
        if not isinstance(self.redis, Gated):
            return []
        client = self.redis.client
        await client.initialize()
        slots = client.nodes_manager.slots_cache
        firsts = {}
        for slot in sorted(slots):
            firsts.setdefault(slots[slot][0].name, slot)
        return [tag_for_slot(slot) for slot in sorted(firsts.values())]

    @unavailable_on_redis_errors
    async def check_dataset(self) -> DatasetState:
        """Read the identity; at the first look create it if Redis has none. Sets ``dataset_lost`` (and
        reports the replica in ``<prefix>:dataset:lost``) when Redis no longer holds the id this replica knows."""
        key = keys.dataset_key(self.prefix)
        if self.dataset_id is None:
            fresh = secrets.token_hex(16)
            tags = await self._cluster_tags()
            if await self.redis.hsetnx(key, "id", fresh):
                await self.redis.hset(key, mapping={"tags": ",".join(tags)})
                for marker in self._identity_keys(tags):
                    await self.redis.set(marker, fresh)
                log.info("dataset identity %s created (the first start on this Redis%s)", fresh,
                         f"; one marker on each of {len(tags)} Cluster masters" if tags else "")
            self._know_dataset((await self.redis.hget(key, "id")).decode())
        found, adopted, tags = await self.redis.hmget(key, "id", "adopted_ms", "tags")
        markers = self._identity_keys(tags.decode().split(",")) if tags else []
        values = [await self.redis.get(marker) for marker in markers]
        if found is not None and found.decode() != self.dataset_id and adopted is not None:
            log.warning("dataset identity %s adopted by an operator (was %s): writing again",
                        found.decode(), self.dataset_id)
            self._know_dataset(found.decode())
            self.dataset_lost = None
        lost = None
        if found is None:
            lost = "the dataset identity is missing (Redis was emptied or replaced)"
        elif found.decode() != self.dataset_id:
            lost = f"Redis holds dataset {found.decode()}, not {self.dataset_id} (replaced)"
        elif any(value is None or value.decode() != self.dataset_id for value in values):
            lost = "a Cluster master lost its dataset marker (emptied, or failed over to a replica that never had it)"
        if lost is None and self.dataset_lost is not None:  # the same dataset answers again (see the module doc)
            log.warning("dataset identity %s found again (%s before): writing again", self.dataset_id,
                        self.dataset_lost)
            self.dataset_lost = None
            await self.redis.hdel(keys.dataset_lost_key(self.prefix), self.replica_name or "?")
        if lost is not None:
            if self.dataset_lost is None:
                log.error("DATASET LOST: %s. Writes are refused and readiness is NOT_SERVING until an operator "
                          "checks the data and runs `dt-scheduler dataset adopt`", lost)
            self.dataset_lost = lost
            await self.redis.hset(keys.dataset_lost_key(self.prefix), self.replica_name or "?",
                                  await self.server_time_ms())
        return DatasetState(self.dataset_id, self.dataset_lost)

    def _know_dataset(self, dataset_id: str) -> None:
        self.dataset_id = dataset_id
        if self._fast is not None:  # a new pipelined connection writes nothing to a Redis without it
            self._fast.identity = (keys.dataset_key(self.prefix), "id", dataset_id.encode())

    def refuse_if_lost(self) -> None:
        if self.dataset_lost is not None:
            raise errors.DatasetLost(f"{self.dataset_lost}; writes are refused until an operator runs "
                                     f"`dt-scheduler dataset adopt`")

    @unavailable_on_redis_errors
    async def adopt_dataset(self) -> str:
        """The operator accepts what Redis holds now: a new identity, marked adopted (every replica takes
        it at its next look and writes again); returns it."""
        fresh = secrets.token_hex(16)
        tags = await self._cluster_tags()
        key = keys.dataset_key(self.prefix)
        await self.redis.delete(key)
        await self.redis.hset(key, mapping={"id": fresh, "adopted_ms": await self.server_time_ms(),
                                            "tags": ",".join(tags)})
        for marker in self._identity_keys(tags):
            await self.redis.set(marker, fresh)
        await self.redis.delete(keys.dataset_lost_key(self.prefix))
        return fresh

    @unavailable_on_redis_errors
    async def dataset_info(self) -> tuple[dict[str, str], dict[str, int]]:
        """The identity hash and the replicas that report it lost (name -> since ms), for ``inspect``."""
        info = await self.redis.hgetall(keys.dataset_key(self.prefix))
        lost = await self.redis.hgetall(keys.dataset_lost_key(self.prefix))
        return ({k.decode(): v.decode() for k, v in info.items()},
                {k.decode(): int(v) for k, v in lost.items()})
