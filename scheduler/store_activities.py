"""Store operations for activity work items (mixed into :class:`Store`).

An activity work item is named ``"<instance id>\\n<execution id>\\n<task id>"`` (ids never
hold control characters) and lives in its instance's partition: queued in
``activities``, its ActivityRequest in ``act-payloads`` until it is completed, and,
while a worker holds it, its claim token in ``act-tokens`` and ``a|<item>`` on
``leases``. A completion is applied once, under the current claim.
"""
from __future__ import annotations

import asyncio
import secrets

from . import errors, keys
from .store_common import unavailable_on_redis_errors


def activity_item(instance_id: str, execution_id: str, task_id: int) -> str:
    return f"{instance_id}\n{execution_id}\n{task_id}"


def activity_instance(item: str) -> str:
    """The orchestration instance id of an activity work item."""
    return item.split("\n", 1)[0]


def parse_activity_item(item: str) -> tuple[str, str, int]:
    instance_id, execution_id, task_id = item.split("\n")
    return instance_id, execution_id, int(task_id)


def activity_token(hub: keys.HubKeys, item: str) -> str:
    instance_id = activity_instance(item)
    return f"{hub.hub}|{keys.partition_of(instance_id, hub.partitions)}|a|{item}|{secrets.token_hex(8)}"


class ActivityOps:
    """Uses the Store's ``_eval``, ``_execute``, ``redis`` and ``channel``."""

    SCRIPTS: tuple[str, ...] = ("claim_activity", "release_activity", "renew_activity_leases",
                                "complete_activity")

    @unavailable_on_redis_errors
    async def queued_activities(self, hub: keys.HubKeys, partition: int, limit: int) -> list[str]:
        """Up to ``limit`` queued activity items of one partition, longest queued first."""
        if limit <= 0:
            return []
        return [m.decode() for m in await self._execute("ZRANGE", hub.partition(partition).activities, 0, limit - 1)]

    @unavailable_on_redis_errors
    async def claim_activity(self, hub: keys.HubKeys, item: str, token: str, lease_ms: int) -> bytes | None:
        """Claim a queued activity item; its serialized ActivityRequest, or None if another claim won."""
        pk = hub.for_instance(activity_instance(item))
        reply = await self._eval("claim_activity", [pk.activities, pk.leases, pk.activity_tokens,
                                                    pk.activity_payloads], [item, token, lease_ms])
        return reply[2] if reply[0] == 0 else None

    @unavailable_on_redis_errors
    async def release_activity(self, hub: keys.HubKeys, item: str, token: str) -> bool:
        """Put a claimed item back in the queue if ``token`` is its current claim."""
        pk = hub.for_instance(activity_instance(item))
        reply = await self._eval("release_activity", [pk.activities, pk.leases, pk.activity_tokens],
                                 [item, "token", token])
        return reply[0] == 0

    @unavailable_on_redis_errors
    async def renew_activity_leases(self, hub: keys.HubKeys, partition: int, items: list[tuple[str, str]],
                                    lease_ms: int) -> list[str]:
        """Extend the leases of (item, token) pairs of one partition still held; returns the items renewed."""
        pk = hub.partition(partition)
        args: list = [lease_ms]
        for item, token in items:
            args += [item, token]
        return [m.decode() for m in await self._eval("renew_activity_leases", [pk.leases, pk.activity_tokens], args)]

    @unavailable_on_redis_errors
    async def sweep_expired_activities(self, hub: keys.HubKeys, partition: int, limit: int) -> int:
        """Re-queue at most ``limit`` activity items of one partition whose lease expired."""
        pk = hub.partition(partition)
        now_ms = await self.server_time_ms()
        members = await self.redis.zrangebyscore(pk.leases, "-inf", now_ms, start=0, num=limit)
        items = [m[2:] for m in (m.decode() for m in members) if m.startswith("a|")]
        replies = await asyncio.gather(*(
            self._eval("release_activity", [pk.activities, pk.leases, pk.activity_tokens], [item, "expired", ""])
            for item in items))
        return sum(1 for reply in replies if reply[0] == 0)

    @unavailable_on_redis_errors
    async def complete_activity(self, hub: keys.HubKeys, item: str, token: str, event: bytes) -> None:
        """Deliver a serialized TaskCompleted/TaskFailed event for the item (see complete_activity.lua);
        LeaseLost, with nothing changed, when ``token`` is not the current claim."""
        instance_id, execution_id, _ = parse_activity_item(item)
        pk = hub.for_instance(instance_id)
        reply = await self._eval(
            "complete_activity",
            [pk.activity_tokens, pk.activity_payloads, pk.leases, pk.instance(instance_id), pk.inbox(instance_id),
             pk.ready],
            [item, token, instance_id, execution_id, event, self.channel, hub.hub])
        if reply[0] != 0:
            raise errors.LeaseLost(instance_id)

    @unavailable_on_redis_errors
    async def activity_requests(self, hub: keys.HubKeys, items: list[str]) -> list[bytes | None]:
        """The serialized ActivityRequest of each item (None if gone); one round trip."""
        return list(await asyncio.gather(*(
            self._execute("HGET", hub.for_instance(activity_instance(item)).activity_payloads, item)
            for item in items)))
