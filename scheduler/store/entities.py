"""Store operations on durable entities (mixed into the Store).

An entity lives in the partition of its id like an instance (keys.EntityKeys): a hash
(state, last modified, the orchestration that holds its lock and the critical section,
the bytes of what waits; while a batch is out, and after it was handed back until the next
claim, ``lease`` and ``claimed_n``), ``ops`` (the
messages it may run now, in order), ``held`` (what waits while another orchestration
holds its lock), ``later`` (delayed signals) and ``seen`` (recent message ids). It is in
the partition's ``entities`` queue while operations wait at the head of ``ops`` and no
batch is out. Messages are :class:`scheduler.protocol.EntityMessage` records; lock
requests and unlocks run in the scripts (lua/prelude.lua ``entity_settle``), operations
go to workers in batches, one batch per entity at a time.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import keys
from .common import unavailable_on_redis_errors
from .scripts import Code

MAX_BATCH = 100  # operations in one batch


@dataclass(frozen=True)
class EntityClaim:
    """An entity's batch handed out under a lease."""

    entity_id: str
    token: str
    state: bytes | None
    messages: list[bytes]  # the batch's EntityMessage records, in order
    lease_expiry_ms: int


@dataclass(frozen=True)
class EntityRecord:
    entity_id: str
    state: str | None
    modified_ms: int
    locked_by: str | None  # the orchestration instance that holds the entity's lock
    backlog: int  # operations waiting (not a batch out, not delayed signals)


def _entity_keys(pk: keys.PartitionKeys, entity_id: str) -> list[str]:
    ek = pk.entity(entity_id)
    return [ek.hash, ek.ops, ek.held, ek.later, ek.seen]


class EntityOps:
    """Uses the Store's ``_write``, ``_eval``, ``_outcome``, ``_execute``, ``redis`` and ``limits``."""

    SCRIPTS: tuple[str, ...] = ("deliver_entity_message", "claim_entity", "complete_entity", "release_entity",
                                "sweep_entity_lease", "renew_entity_leases", "get_entity", "clean_entity")

    @unavailable_on_redis_errors
    async def deliver_entity_message(self, hub: keys.HubKeys, entity_id: str, message_id: str,
                                     record: bytes) -> tuple[Code, bool]:
        """Put an encoded EntityMessage on an entity once (see deliver_entity_message.lua): (OK, DONE_BEFORE
        (delivered before), INBOX_FULL or TOO_LARGE (an operation the entity has no room for); whether the
        message made the entity ready, so that it is worth offering to a stream)."""
        pk = hub.for_instance(entity_id)
        reply = await self._write(
            "deliver_entity_message", hub, pk,
            [*_entity_keys(pk, entity_id), pk.entities, pk.due, pk.entity_index, pk.outbox],
            [entity_id, message_id, record, self.limits.max_inbox_events, self.limits.max_work_item_bytes])
        code, values = self._outcome(reply, entity_id, Code.DONE_BEFORE, Code.INBOX_FULL, Code.TOO_LARGE)
        return code, code is Code.OK and values == [1]

    @unavailable_on_redis_errors
    async def claim_entity(self, hub: keys.HubKeys, entity_id: str, token: str, lease_ms: int) -> EntityClaim | None:
        """Claim a ready entity's next batch (see claim_entity.lua); None when there is none to hand out."""
        pk = hub.for_instance(entity_id)
        reply = await self._write(
            "claim_entity", hub, pk, [*_entity_keys(pk, entity_id), pk.entities, pk.leases, pk.due, pk.outbox],
            [entity_id, token, lease_ms, MAX_BATCH, self.limits.max_work_item_bytes])
        code, values = self._outcome(reply, entity_id, Code.NOT_READY, Code.NOT_FOUND, Code.LEASED)
        if code is not Code.OK:
            return None
        expiry, state, messages = values
        return EntityClaim(entity_id, token, state, list(messages), int(expiry))

    @unavailable_on_redis_errors
    async def claimed_messages(self, hub: keys.HubKeys, entity_id: str, token: str) -> list[bytes] | None:
        """The messages of the batch claimed under ``token``, None unless it is the current claim (they
        stay as they are while the claim holds, so reading them apart from the completion is consistent)."""
        ek = hub.for_instance(entity_id).entity(entity_id)
        lease, claimed_n = await self._execute("HMGET", ek.hash, "lease", "claimed_n")
        if lease is None or lease.decode() != token:
            return None
        n = int(claimed_n)
        return list(await self._execute("LRANGE", ek.ops, 0, n - 1)) if n else []

    @unavailable_on_redis_errors
    async def complete_entity(self, hub: keys.HubKeys, entity_id: str, token: str, done: int,
                              state: str | None | bool, outbox: list[bytes]) -> None:
        """Apply a batch result under its claim (see complete_entity.lua): ``done`` operations are trimmed;
        ``state`` is the new state, None to delete it, False to leave it; ``outbox`` encoded messages.
        LeaseLost, with nothing changed, when ``token`` is not the entity's claim (it stays its claim after
        the batch was handed back, until the next claim)."""
        pk = hub.for_instance(entity_id)
        state_arg = "" if state is False else "-" if state is None else "=" + state
        reply = await self._write("complete_entity", hub, pk,
                                  [*_entity_keys(pk, entity_id), pk.entities, pk.leases, pk.outbox, pk.due],
                                  [entity_id, token, done, state_arg, *outbox])
        self._outcome(reply, entity_id)

    @unavailable_on_redis_errors
    async def release_entity(self, hub: keys.HubKeys, entity_id: str, token: str, keep_token: bool = False) -> bool:
        """Hand a claimed batch back if ``token`` is its claim; False (nothing changed) if not. With
        ``keep_token`` a completion under the token is still applied until the next claim takes the entity."""
        pk = hub.for_instance(entity_id)
        reply = await self._write("release_entity", hub, pk,
                                  [*_entity_keys(pk, entity_id), pk.entities, pk.leases, pk.outbox],
                                  [entity_id, token, "1" if keep_token else "0"])
        return self._outcome(reply, entity_id, Code.LEASE_LOST)[0] is Code.OK

    @unavailable_on_redis_errors
    async def sweep_entity_lease(self, hub: keys.HubKeys, entity_id: str) -> bool:
        """Release an entity's batch whose lease expired (see sweep_entity_lease.lua); True if it was."""
        pk = hub.for_instance(entity_id)
        reply = await self._write("sweep_entity_lease", hub, pk,
                                  [*_entity_keys(pk, entity_id), pk.entities, pk.leases, pk.outbox], [entity_id])
        return self._outcome(reply, entity_id, Code.NOT_READY)[0] is Code.OK

    @unavailable_on_redis_errors
    async def renew_entity_leases(self, hub: keys.HubKeys, partition: int, items: list[tuple[str, str]],
                                  lease_ms: int) -> list[str]:
        """Extend the leases of (entity id, token) pairs of one partition still held; returns those renewed."""
        pk = hub.partition(partition)
        args: list = [lease_ms]
        for entity_id, token in items:
            args += [entity_id, token]
        reply = await self._write("renew_entity_leases", hub, pk,
                                  [pk.leases, *(pk.entity(entity_id).hash for entity_id, _ in items)], args)
        return [m.decode() for m in self._outcome(reply, hub.hub)[1][1:]]

    @unavailable_on_redis_errors
    async def get_entity(self, hub: keys.HubKeys, entity_id: str) -> EntityRecord | None:
        """One entity as it is now; None if it never got a message (or was removed)."""
        pk = hub.for_instance(entity_id)
        reply = await self._eval("get_entity", hub, [*_entity_keys(pk, entity_id), pk.leases], [entity_id])
        code, values = self._outcome(reply, entity_id, Code.NOT_FOUND)
        if code is not Code.OK:
            return None
        state, modified_ms, locked_by, backlog = values
        return EntityRecord(entity_id, None if state is None else state.decode(), int(modified_ms),
                            None if locked_by is None else locked_by.decode(), int(backlog))

    async def get_entities(self, hub: keys.HubKeys, entity_ids: list[str]) -> list[EntityRecord | None]:
        """Several entities at once (their reads share round trips)."""
        return list(await asyncio.gather(*(self.get_entity(hub, entity_id) for entity_id in entity_ids)))

    @unavailable_on_redis_errors
    async def entity_ids(self, hub: keys.HubKeys, partition: int, prefix: str, after: str | None,
                         limit: int) -> list[str]:
        """Up to ``limit`` entity ids of one partition that start with ``prefix``, after ``after``, in
        lexical (byte) order."""
        low, high = prefix.encode(), prefix.encode() + b"\xff"  # ids are UTF-8: no byte 0xff in them
        start = b"(" + after.encode() if after is not None and after.encode() >= low else b"[" + low
        end = b"[" + high if prefix else b"+"
        ids = await self._execute("ZRANGE", hub.partition(partition).entity_index, start, end, "BYLEX",
                                  "LIMIT", 0, limit)
        return [i.decode() for i in ids]

    @unavailable_on_redis_errors
    async def clean_entity(self, hub: keys.HubKeys, entity_id: str, section: str | None,
                           remove_empty: bool) -> tuple[bool, bool]:
        """(removed, lock released) of one entity (see clean_entity.lua)."""
        pk = hub.for_instance(entity_id)
        reply = await self._write("clean_entity", hub, pk,
                                  [*_entity_keys(pk, entity_id), pk.entities, pk.entity_index, pk.outbox],
                                  [entity_id, section or "", "1" if remove_empty else "0"])
        removed, released = self._outcome(reply, entity_id)[1]
        return bool(removed), bool(released)

    @unavailable_on_redis_errors
    async def entity_locks(self, hub: keys.HubKeys, entity_ids: list[str]) -> list[tuple[str | None, str | None]]:
        """(holder instance id, critical section) of each entity's lock, (None, None) if unlocked."""
        replies = await asyncio.gather(*(
            self._execute("HMGET", hub.for_instance(e).entity(e).hash, "locked_by", "lock_section")
            for e in entity_ids))
        return [(None if a is None else a.decode(), None if b is None else b.decode()) for a, b in replies]
