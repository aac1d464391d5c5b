"""Store operations on activity work items (mixed into the Store).

An activity work item (``protocol.activity_item``) lives in its instance's partition:
queued in ``activities``, its ActivityRequest in ``act-payloads`` until it is completed,
and, while a worker holds it, its claim token in ``act-tokens`` and its lease member on
``leases``. A completion is applied once, under the claim's token, which stays in ``act-tokens``
when the item is handed back (its stream closed, its lease swept) until the next claim.
"""
from __future__ import annotations

import asyncio

from .. import protocol
from . import keys
from .common import unavailable_on_redis_errors
from .records import Claim, claim_of
from .scripts import Code


DEFAULT_OVERFLOW = "EventTooLarge\nan event found no room"


class ActivityOps:
    """Uses the Store's ``_write``, ``_outcome``, ``_execute`` and ``limits``."""

    SCRIPTS: tuple[str, ...] = ("claim_activity", "release_activity", "sweep_activity_lease",
                                "renew_activity_leases", "complete_activity")

    @unavailable_on_redis_errors
    async def claim_activity(self, hub: keys.HubKeys, item: str, token: str, lease_ms: int) -> bytes | None:
        """Claim a queued activity item; its serialized ActivityRequest, or None if another claim won."""
        pk = hub.for_instance(protocol.instance_of(item))
        reply = await self._write("claim_activity", hub, pk, [pk.activities, pk.leases, pk.activity_tokens,
                                                              pk.activity_payloads], [item, token, lease_ms])
        code, values = self._outcome(reply, protocol.instance_of(item), Code.NOT_READY)
        return values[1] if code is Code.OK else None

    @unavailable_on_redis_errors
    async def release_activity(self, hub: keys.HubKeys, item: str, token: str, keep_token: bool = False) -> bool:
        """Put a claimed item back in the queue if ``token`` is its claim. With ``keep_token`` a completion
        under the token is still applied until the next claim takes the item."""
        pk = hub.for_instance(protocol.instance_of(item))
        reply = await self._write("release_activity", hub, pk, [pk.activities, pk.leases, pk.activity_tokens],
                                  [item, token, "1" if keep_token else "0"])
        return self._outcome(reply, protocol.instance_of(item), Code.LEASE_LOST)[0] is Code.OK

    @unavailable_on_redis_errors
    async def sweep_activity_lease(self, hub: keys.HubKeys, item: str) -> bool:
        """Re-queue the item if its lease has expired (see sweep_activity_lease.lua); True if it was."""
        pk = hub.for_instance(protocol.instance_of(item))
        reply = await self._write("sweep_activity_lease", hub, pk, [pk.activities, pk.leases, pk.activity_tokens],
                                  [item])
        return self._outcome(reply, protocol.instance_of(item), Code.NOT_READY)[0] is Code.OK

    @unavailable_on_redis_errors
    async def renew_activity_leases(self, hub: keys.HubKeys, partition: int, items: list[tuple[str, str]],
                                    lease_ms: int) -> list[str]:
        """Extend the leases of (item, token) pairs of one partition still held; returns the items renewed."""
        pk = hub.partition(partition)
        args: list = [lease_ms]
        for item, token in items:
            args += [item, token]
        reply = await self._write("renew_activity_leases", hub, pk, [pk.leases, pk.activity_tokens], args)
        return [m.decode() for m in self._outcome(reply, hub.hub)[1][1:]]

    @unavailable_on_redis_errors
    async def complete_activity(self, hub: keys.HubKeys, item: str, token: str, event: bytes,
                                overflow: str = DEFAULT_OVERFLOW) -> bool:
        """Deliver a serialized TaskCompleted/TaskFailed event for the item (see complete_activity.lua);
        LeaseLost, with nothing changed, when ``token`` is not the current claim. False when the
        instance had no room for the event and was marked to fail with ``overflow``."""
        code, _ = await self._complete_activity(hub, item, token, event, overflow, ("", 0, b""))
        return code is Code.OK

    @unavailable_on_redis_errors
    async def complete_activity_and_claim(self, hub: keys.HubKeys, item: str, token: str, event: bytes,
                                          overflow: str, claim_token: str, lease_ms: int,
                                          episode_start: bytes) -> Claim | None:
        """:meth:`complete_activity`, and in the same step the claim of its instance under ``claim_token``
        (as :meth:`claim_orchestration`) if the instance is ready; the claim, or None when there was
        nothing to claim."""
        code, values = await self._complete_activity(hub, item, token, event, overflow,
                                                     (claim_token, lease_ms, episode_start))
        if code is not Code.OK or not values:
            return None
        return claim_of(protocol.instance_of(item), claim_token, values)

    async def _complete_activity(self, hub: keys.HubKeys, item: str, token: str, event: bytes, overflow: str,
                                 claim: tuple[str, int, bytes]) -> tuple[Code, list]:
        instance_id, execution_id, _ = protocol.parse_activity_item(item)
        iid = instance_id
        pk = hub.for_instance(iid)
        reply = await self._write(
            "complete_activity", hub, pk,
            [pk.activity_tokens, pk.activity_payloads, pk.leases, pk.instance(iid), pk.inbox(iid), pk.ready,
             pk.history(iid), pk.stats, pk.timers(iid), pk.due, pk.activities, pk.by_status],
            [item, token, iid, execution_id, event, self.limits.max_work_item_bytes, overflow, *claim])
        return self._outcome(reply, iid, Code.TOO_LARGE)

    @unavailable_on_redis_errors
    async def activity_requests(self, hub: keys.HubKeys, items: list[str]) -> list[bytes | None]:
        """The serialized ActivityRequest of each item (None if gone); one round trip."""
        return list(await asyncio.gather(*(
            self._execute("HGET", hub.for_instance(protocol.instance_of(item)).activity_payloads, item)
            for item in items)))
