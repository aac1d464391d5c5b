"""Store primitives for dispatching orchestration work items under leases (mixed into :class:`Store`).

A claim takes an instance out of its partition's ready set and puts the member
``o|<id>`` on the partition's ``leases`` zset (score = lease expiry, Redis time).
While claimed, the instance hash holds ``lease`` (the claim token), ``claimed_n``
(how many inbox events were handed out) and ``episode_start`` (the serialized
OrchestratorStarted event handed out). The inbox is not consumed at claim: the
completion trims the first ``claimed_n`` events, so an expired or released claim
loses nothing, and events that arrive during the episode stay for the next one.

Contract for the completion (not built here): it is applied only while ``lease``
equals its token; it removes the lease member and the three claim fields, trims
``claimed_n`` events off the inbox, and re-readies the instance when events remain
(a claim attempt made during the episode took it out of ready, see
claim_orchestration.lua).
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from . import errors, keys
from .store_common import unavailable_on_redis_errors

RENEW_BATCH = 100  # most leases one renew_lease script call touches

# claim_orchestration.lua result codes
_CLAIMED = 0


def lease_member(instance_id: str) -> str:
    """The leases zset member of an orchestration work item."""
    return "o|" + instance_id


def claim_token(hub: keys.HubKeys, instance_id: str) -> str:
    """A fresh, unguessable claim token that names what it claims (for logs)."""
    return f"{hub.hub}|{keys.partition_of(instance_id, hub.partitions)}|o|{instance_id}|{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Claim:
    """An orchestration work item handed out under a lease."""

    instance_id: str
    token: str
    fields: dict[str, bytes]  # the instance hash after the claim
    past_events: list[bytes]  # the history, serialized HistoryEvents
    new_events: list[bytes]  # the first ``claimed_n`` inbox events
    lease_expiry_ms: int


class DispatchOps:
    """Uses the Store's ``_eval`` (scripts through the request connection), ``_execute``, ``redis``
    and ``channel``."""

    SCRIPTS: tuple[str, ...] = ("claim_orchestration", "renew_lease", "release_orchestration", "sweep_leases",
                                "complete_orchestration", "continue_as_new", "deliver_event")

    @unavailable_on_redis_errors
    async def ready_candidates(self, hub: keys.HubKeys, partition: int, limit: int) -> list[str]:
        """Up to ``limit`` ready instance ids of one partition, longest ready first (to feed
        :meth:`claim_orchestration`; another replica may claim any of them first)."""
        if limit <= 0:
            return []
        members = await self._execute("ZRANGE", hub.partition(partition).ready, 0, limit - 1)
        return [m.decode() for m in members]

    @unavailable_on_redis_errors
    async def claim_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str, lease_ms: int,
                                  episode_start: bytes) -> Claim | None:
        """Claim a ready instance under a lease of ``lease_ms`` (see claim_orchestration.lua).

        None when there is nothing to hand out: another claim won, or the instance is missing,
        cannot run now (terminal, suspended) or is in an episode under a live lease."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        reply = await self._eval(
            "claim_orchestration",
            [pk.ready, pk.leases, pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.stats, pk.timers(iid),
             pk.due],
            [iid, token, lease_ms, episode_start, self.channel, hub.hub])
        if reply[0] != _CLAIMED:
            return None
        _, expiry, raw, past, new = reply
        fields = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
        return Claim(iid, token, fields, list(past), list(new), int(expiry))

    @unavailable_on_redis_errors
    async def renew_leases(self, hub: keys.HubKeys, partition: int, items: list[tuple[str, str]],
                           lease_ms: int) -> list[str]:
        """Extend to now + ``lease_ms`` the leases of ``(instance id, token)`` items of one partition
        whose token is still current (see renew_lease.lua); returns the ids renewed. Batches of
        :data:`RENEW_BATCH` items go in separate script calls that share one round trip."""
        pk = hub.partition(partition)
        for iid, _ in items:
            if keys.partition_of(iid, hub.partitions) != partition:
                raise ValueError(f"instance {iid!r} is not in partition {partition}")
        calls = []
        for start in range(0, len(items), RENEW_BATCH):
            batch = items[start:start + RENEW_BATCH]
            args: list = [lease_ms]
            for iid, token in batch:
                args += [iid, token]
            calls.append(self._eval("renew_lease", [pk.leases] + [pk.instance(iid) for iid, _ in batch], args))
        replies = await asyncio.gather(*calls)
        return [m.decode() for reply in replies for m in reply[1:]]

    @unavailable_on_redis_errors
    async def release_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str) -> bool:
        """Hand a claim back (see release_orchestration.lua): True if ``token`` was the current
        claim and the instance is ready again; False, with nothing changed, otherwise."""
        pk = hub.for_instance(instance_id)
        reply = await self._eval("release_orchestration", [pk.leases, pk.ready, pk.instance(instance_id)],
                                 [instance_id, token])
        return reply[0] == 0

    @unavailable_on_redis_errors
    async def sweep_expired_leases(self, hub: keys.HubKeys, partition: int, limit: int) -> list[str]:
        """Release at most ``limit`` expired orchestration leases of one partition; returns their ids.

        Two steps, because the script must name each instance hash as a key: read the expired
        members (Redis time), then run sweep_leases.lua for each, which re-checks the expiry
        atomically, so a lease renewed or released in between is left alone. Any replica may run it."""
        if limit <= 0:
            return []
        pk = hub.partition(partition)
        now_ms = await self.server_time_ms()
        members = await self.redis.zrangebyscore(pk.leases, "-inf", now_ms, start=0, num=limit)
        ids = [m[2:] for m in (m.decode() for m in members) if m.startswith("o|")]
        replies = await asyncio.gather(*(
            self._eval("sweep_leases", [pk.leases, pk.ready, pk.instance(iid)], [iid]) for iid in ids))
        return [iid for iid, reply in zip(ids, replies) if reply[0] == 1]

    @unavailable_on_redis_errors
    async def complete_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str, events: list[bytes],
                                     status: str | None = None, output: str | None = None,
                                     failure: bytes | None = None, custom_status: str | None = None,
                                     activities: list[tuple[str, bytes]] = (),
                                     timers: list[tuple[int, bytes]] = (), outbox: list[bytes] = (),
                                     max_history: int | None = None) -> None:
        """Apply an episode's result under its claim (see complete_orchestration.lua): ``events`` are
        the history events of the worker's actions; ``status`` the final status if it ended;
        ``activities`` (item, serialized ActivityRequest) pairs to queue; ``timers`` (fire time ms,
        serialized TimerFired event) pairs to deliver at their time. HistoryLimitExceeded, with nothing
        changed, when the history would grow past ``max_history`` events.
        LeaseLost, with nothing changed, when ``token`` is not the current claim."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        pairs = [x for item in activities for x in item]
        timer_pairs = [x for timer in timers for x in timer]
        reply = await self._eval(
            "complete_orchestration",
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.ready, pk.leases, pk.stats,
             pk.activities, pk.activity_payloads, pk.timers(iid), pk.due, pk.outbox],
            [iid, token, status or "", "" if output is None else "=" + output, failure or b"",
             "" if custom_status is None else "=" + custom_status, self.channel, hub.hub, len(events),
             len(activities), len(timers), max_history or 0, *events, *pairs, *timer_pairs, *outbox])
        if reply[0] == 2:
            raise errors.HistoryLimitExceeded(instance_id, int(reply[1]))
        if reply[0] != 0:
            raise errors.LeaseLost(instance_id)

    @unavailable_on_redis_errors
    async def episode_events(self, hub: keys.HubKeys, instance_id: str, claimed_n: int) -> tuple[list[bytes],
                                                                                                   list[bytes]]:
        """(history, new events handed out with the current claim) of a claimed instance. Both stay as
        they are while the claim holds, so reading them apart from the completion is consistent."""
        pk = hub.for_instance(instance_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(pk.history(instance_id), 0, -1)
            pipe.lrange(pk.inbox(instance_id), 0, claimed_n - 1)  # LRANGE 0 -1 would be all: trimmed below
            history, delivered = await pipe.execute()
        return history, delivered[:claimed_n]

    @unavailable_on_redis_errors
    async def continue_as_new(self, hub: keys.HubKeys, instance_id: str, token: str, execution_id: str,
                              events: list[bytes], custom_status: str | None = None) -> None:
        """Start the next execution under the episode's claim (see continue_as_new.lua): ``events`` are
        the new ExecutionStarted event and the carried-over events. LeaseLost when ``token`` is stale."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        reply = await self._eval(
            "continue_as_new",
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.ready, pk.leases, pk.timers(iid), pk.due],
            [iid, token, execution_id, "" if custom_status is None else "=" + custom_status, *events])
        if reply[0] != 0:
            raise errors.LeaseLost(instance_id)

    @unavailable_on_redis_errors
    async def deliver_event(self, hub: keys.HubKeys, instance_id: str, message_id: str, event: bytes) -> bool:
        """Append an event from another instance once (see deliver_event.lua); False if it was delivered
        before, or the instance is gone or has ended."""
        pk = hub.for_instance(instance_id)
        reply = await self._eval("deliver_event", [pk.delivered(instance_id), pk.instance(instance_id),
                                                   pk.inbox(instance_id), pk.ready],
                                 [message_id, event, instance_id, self.channel, hub.hub])
        return reply[0] == 0

    @unavailable_on_redis_errors
    async def instance_names(self, hub: keys.HubKeys, instance_ids: list[str]) -> list[tuple[str | None, str]]:
        """(name, version or "") of each instance, (None, "") for one that is gone; one round trip."""
        replies = await asyncio.gather(*(
            self._execute("HMGET", hub.for_instance(iid).instance(iid), "name", "version") for iid in instance_ids))
        return [(None if name is None else name.decode(), (version or b"").decode()) for name, version in replies]
