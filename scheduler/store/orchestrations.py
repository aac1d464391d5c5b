"""Store operations on orchestration work items and what crosses instances (mixed into the Store).

A claim takes an instance out of its partition's ready set and puts its lease
member on the partition's ``leases`` zset (score = lease expiry, Redis time).
While claimed, the instance hash holds ``lease`` (the claim token), ``claimed_n``
(how many inbox events were handed out) and ``episode_start`` (the serialized
OrchestratorStarted event handed out). The inbox is not consumed at claim: the
completion trims the first ``claimed_n`` events, so an expired or released claim
loses nothing, and events that arrive during the episode stay for the next one.
The completion is applied only while ``lease`` equals its token: a claim handed back when
its stream closed, or swept when its lease expired, keeps ``lease``, ``claimed_n`` and
``episode_start`` (not its lease member) until the next claim replaces them.

Messages for other instances wait in the partition's outbox, written by the
completion in the same step; one relay at a time per partition holds the outbox and reads
them (:meth:`take_outbox`), delivers each and then removes it (:meth:`outbox_remove`), and lets
go (:meth:`release_outbox`).
"""
from __future__ import annotations

import asyncio

from . import keys
from .common import unavailable_on_redis_errors
from .records import Claim, Completion, claim_of, state_of
from .scripts import Code

RENEW_BATCH = 100  # most leases one renew script call touches


class OrchestrationOps:
    """Uses the Store's ``_write``, ``_outcome``, ``_execute``, ``redis`` and ``limits``."""

    SCRIPTS: tuple[str, ...] = ("claim_orchestration", "renew_orchestration_leases", "release_orchestration",
                                "sweep_orchestration_lease", "complete_orchestration", "continue_as_new",
                                "rewind_orchestration", "take_outbox", "release_outbox")

    @unavailable_on_redis_errors
    async def claim_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str, lease_ms: int,
                                  episode_start: bytes) -> Claim | None:
        """Claim a ready instance under a lease of ``lease_ms`` (see claim_orchestration.lua).

        None when there is nothing to hand out: another claim won, or the instance is missing,
        cannot run now (terminal, suspended) or is in an episode under a live lease."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        reply = await self._write(
            "claim_orchestration", hub, pk,
            [pk.ready, pk.leases, pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.stats, pk.timers(iid),
             pk.due, pk.by_status],
            [iid, token, lease_ms, episode_start])
        code, values = self._outcome(reply, iid, Code.NOT_READY, Code.NOT_FOUND, Code.WRONG_STATUS, Code.LEASED)
        if code is not Code.OK:
            return None
        return claim_of(iid, token, values)

    @unavailable_on_redis_errors
    async def renew_orchestration_leases(self, hub: keys.HubKeys, partition: int, items: list[tuple[str, str]],
                                         lease_ms: int) -> list[str]:
        """Extend to now + ``lease_ms`` the leases of ``(instance id, token)`` items of one partition
        whose token is still current (see renew_orchestration_leases.lua); returns the ids renewed.
        Batches of :data:`RENEW_BATCH` items go in separate script calls that share one round trip."""
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
            calls.append(self._write("renew_orchestration_leases", hub, pk,
                                     [pk.leases] + [pk.instance(iid) for iid, _ in batch], args))
        replies = await asyncio.gather(*calls)
        return [m.decode() for reply in replies for m in self._outcome(reply, hub.hub)[1][1:]]

    @unavailable_on_redis_errors
    async def release_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str,
                                    keep_token: bool = False) -> bool:
        """Hand a claim back (see release_orchestration.lua): True if ``token`` was the instance's
        claim and the instance is ready again; False, with nothing changed, otherwise. With
        ``keep_token`` a completion under the token is still applied until the next claim."""
        pk = hub.for_instance(instance_id)
        reply = await self._write("release_orchestration", hub, pk, [pk.leases, pk.ready, pk.instance(instance_id)],
                                  [instance_id, token, "1" if keep_token else "0"])
        return self._outcome(reply, instance_id, Code.LEASE_LOST)[0] is Code.OK

    @unavailable_on_redis_errors
    async def sweep_orchestration_lease(self, hub: keys.HubKeys, instance_id: str) -> bool:
        """Release the claim on an instance if its lease has expired (see sweep_orchestration_lease.lua);
        True if it was released."""
        pk = hub.for_instance(instance_id)
        reply = await self._write("sweep_orchestration_lease", hub, pk,
                                  [pk.leases, pk.ready, pk.instance(instance_id)], [instance_id])
        return self._outcome(reply, instance_id, Code.NOT_READY)[0] is Code.OK

    @unavailable_on_redis_errors
    async def complete_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str, events: list[bytes],
                                     status: str | None = None, output: str | None = None,
                                     failure: bytes | None = None, custom_status: str | None = None,
                                     activities: list[tuple[str, bytes]] = (),
                                     timers: list[tuple[int, bytes]] = (), outbox: list[bytes] = (),
                                     enforce_limits: bool = True,
                                     claim_activities: tuple[int, list[str]] | None = None,
                                     with_state: bool = False) -> Completion:
        """Apply an episode's result under its claim (see complete_orchestration.lua): ``events`` are
        the history events of the worker's actions; ``status`` the final status if it ended;
        ``activities`` (item, serialized ActivityRequest) pairs to queue; ``timers`` (fire time ms,
        serialized TimerFired event) pairs to deliver at their time; ``outbox`` encoded messages for
        other instances; ``claim_activities`` (lease ms, a claim token per activity): the activities are
        claimed at once for the caller's stream instead of queued. With nothing changed: LeaseLost when
        ``token`` is not the current claim; with ``enforce_limits``, HistoryLimitExceeded,
        WorkItemTooLarge or StateTooLarge when the history, the next work item or the instance's state
        would pass its limit. Returns whether events that arrived during the episode made the instance
        ready again and, ``with_state`` and the orchestration ended, its state as :meth:`get_instance`
        reads it."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        pairs = [x for item in activities for x in item]
        timer_pairs = [x for timer in timers for x in timer]
        limits = (self.limits.max_history_events, self.limits.max_work_item_bytes, self.limits.max_state_bytes) \
            if enforce_limits else (0, 0, 0)
        claim_lease, claim_tokens = claim_activities or (0, [])
        if len(claim_tokens) != (len(activities) if claim_lease else 0):
            raise ValueError("claim_activities needs one claim token per activity")
        reply = await self._write(
            "complete_orchestration", hub, pk,
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.ready, pk.leases, pk.stats,
             pk.activities, pk.activity_payloads, pk.timers(iid), pk.due, pk.outbox, pk.by_completed,
             pk.activity_tokens, pk.by_status],
            [iid, token, status or "", "" if output is None else "=" + output, failure or b"",
             "" if custom_status is None else "=" + custom_status, len(events),
             len(activities), len(timers), *limits, claim_lease, "1" if with_state else "0", *events, *pairs,
             *claim_tokens, *timer_pairs, *outbox])
        values = self._outcome(reply, instance_id)[1]
        return Completion(values[0] == 1, state_of(*values[1:]) if len(values) > 1 else None)

    @unavailable_on_redis_errors
    async def continue_as_new(self, hub: keys.HubKeys, instance_id: str, token: str, execution_id: str,
                              events: list[bytes], custom_status: str | None = None,
                              outbox: list[bytes] = ()) -> None:
        """Start the next execution under the episode's claim (see continue_as_new.lua): ``events`` are
        the new ExecutionStarted event and the carried-over events; ``outbox`` encoded messages the ending
        execution sent. LeaseLost when ``token`` is stale; WorkItemTooLarge when the next work item would
        not fit (nothing changed in both cases)."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        reply = await self._write(
            "continue_as_new", hub, pk,
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.ready, pk.leases, pk.timers(iid), pk.due,
             pk.outbox],
            [iid, token, execution_id, "" if custom_status is None else "=" + custom_status,
             self.limits.max_work_item_bytes, len(events), *events, *outbox])
        self._outcome(reply, instance_id)

    @unavailable_on_redis_errors
    async def rewind_orchestration(self, hub: keys.HubKeys, instance_id: str, token: str, history: list[bytes],
                                   start_index: int, fields: dict[str, str], activities: list[tuple[str, bytes]] = (),
                                   timers: list[tuple[int, bytes]] = (), outbox: list[bytes] = ()) -> None:
        """Replace the history of a rewound instance under the episode's claim (see rewind_orchestration.lua):
        ``history`` the new one (serialized), its ExecutionStarted event at ``start_index``; ``fields`` of
        the instance hash its start event sets; ``activities``, ``timers`` and ``outbox`` what it waits for
        that is set going again (as complete_orchestration takes them). With nothing changed: LeaseLost
        when ``token`` is not the current claim; HistoryLimitExceeded or WorkItemTooLarge when the new
        history or the next work item would pass its limit."""
        pk = hub.for_instance(instance_id)
        iid = instance_id
        pairs = [x for field in fields.items() for x in field]
        activity_pairs = [x for item in activities for x in item]
        timer_pairs = [x for timer in timers for x in timer]
        reply = await self._write(
            "rewind_orchestration", hub, pk,
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.ready, pk.leases, pk.activities,
             pk.activity_payloads, pk.timers(iid), pk.due, pk.outbox],
            [iid, token, start_index, self.limits.max_history_events, self.limits.max_work_item_bytes,
             len(fields), len(history), len(activities), len(timers), *pairs, *history, *activity_pairs,
             *timer_pairs, *outbox])
        self._outcome(reply, instance_id)

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
    async def instance_names(self, hub: keys.HubKeys, instance_ids: list[str]) -> list[tuple[str | None, str]]:
        """(name, version or "") of each instance, (None, "") for one that is gone; one round trip."""
        replies = await self.instance_fields(hub, instance_ids, ("name", "version"))
        return [(None if name is None else name.decode(), (version or b"").decode()) for name, version in replies]

    @unavailable_on_redis_errors
    async def instance_fields(self, hub: keys.HubKeys, instance_ids: list[str],
                              names: tuple[str, ...]) -> list[list[bytes | None]]:
        """The values of the fields ``names`` of each instance's hash (None where absent); one round trip."""
        return list(await asyncio.gather(*(
            self._execute("HMGET", hub.for_instance(iid).instance(iid), *names) for iid in instance_ids)))

    # -- the outbox ----------------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def take_outbox(self, hub: keys.HubKeys, partition: int, owner: str, ttl_ms: int,
                          limit: int) -> list[bytes] | None:
        """Hold a partition's outbox for the relay ``owner`` (for ``ttl_ms``, renewed by taking it again) and
        read up to ``limit`` of its oldest messages (left there); None when another relay holds it
        (see take_outbox.lua)."""
        pk = hub.partition(partition)
        reply = await self._eval("take_outbox", hub, [pk.relay, pk.outbox], [owner, ttl_ms, limit])
        code, messages = self._outcome(reply, hub.hub, Code.LEASED)
        return None if code is Code.LEASED else messages

    @unavailable_on_redis_errors
    async def release_outbox(self, hub: keys.HubKeys, partition: int, owner: str) -> int:
        """Let go of a partition's outbox held by ``owner``; returns how many messages wait in it."""
        pk = hub.partition(partition)
        reply = await self._eval("release_outbox", hub, [pk.relay, pk.outbox], [owner])
        return int(self._outcome(reply, hub.hub)[1][0])

    @unavailable_on_redis_errors
    async def outbox_remove(self, hub: keys.HubKeys, partition: int, message: bytes) -> None:
        """Remove a delivered message from a partition's outbox."""
        await self._execute("LREM", hub.partition(partition).outbox, 1, message)
