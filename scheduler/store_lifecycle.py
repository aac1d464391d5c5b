"""Store operations by which clients change an instance's lifecycle (mixed into :class:`Store`).

Each is one script in ``lua/`` (its header tells what it does in each status) and
returns the instance's status *before* the call, so the caller can tell what happened.
The hash fields ``prev_status`` and ``due_ms`` exist only while an instance is
SUSPENDED: the status to go back to, and the due time to go back to (if it was waiting
on the due set).
"""
from __future__ import annotations

from . import errors
from .keys import HubKeys
from .store_common import unavailable_on_redis_errors


def _status(reply, instance_id: str) -> str:
    """The status in a lifecycle script's reply, or InstanceNotFound."""
    if reply[0] == errors.NOT_FOUND:
        raise errors.InstanceNotFound(instance_id)
    return reply[1].decode()


class LifecycleOps:
    """Uses the Store's ``_eval`` (scripts through the request connection) and ``redis``."""

    SCRIPTS: tuple[str, ...] = ("raise_event", "terminate_instance", "suspend_instance", "resume_instance")

    @unavailable_on_redis_errors
    async def raise_event(self, hub: HubKeys, instance_id: str, event: bytes) -> str:
        """Append a serialized EventRaised event to the inbox (see raise_event.lua); terminal
        instances are left unchanged. Returns the instance's status."""
        pk = hub.for_instance(instance_id)
        reply = await self._eval("raise_event", [pk.instance(instance_id), pk.inbox(instance_id), pk.ready],
                                 [instance_id, event, self.channel, hub.hub])
        return _status(reply, instance_id)

    @unavailable_on_redis_errors
    async def terminate_instance(self, hub: HubKeys, instance_id: str, event: bytes, output: str | None,
                                 notice: bytes = b"") -> str:
        """End an instance not yet dispatched at once, or queue the serialized ExecutionTerminated event
        for a dispatched one (see terminate_instance.lua). ``notice``: the outbox message telling its
        parent, written only if it is ended at once. Returns the status before."""
        pk = hub.for_instance(instance_id)
        reply = await self._eval(
            "terminate_instance",
            [pk.instance(instance_id), pk.inbox(instance_id), pk.history(instance_id), pk.due, pk.ready, pk.stats,
             pk.outbox],
            [instance_id, event, "0" if output is None else "1", output or "", self.channel, hub.hub, notice])
        return _status(reply, instance_id)

    @unavailable_on_redis_errors
    async def suspend_instance(self, hub: HubKeys, instance_id: str, event: bytes) -> str:
        """Hold a PENDING or RUNNING instance out of due and ready (see suspend_instance.lua).
        Returns the status before."""
        return await self._suspend_or_resume("suspend_instance", hub, instance_id, event)

    @unavailable_on_redis_errors
    async def resume_instance(self, hub: HubKeys, instance_id: str, event: bytes) -> str:
        """Give a SUSPENDED instance back its status and its place in due or ready
        (see resume_instance.lua). Returns the status before."""
        return await self._suspend_or_resume("resume_instance", hub, instance_id, event)

    async def _suspend_or_resume(self, script: str, hub: HubKeys, instance_id: str, event: bytes) -> str:
        pk = hub.for_instance(instance_id)
        reply = await self._eval(script, [pk.instance(instance_id), pk.inbox(instance_id), pk.due, pk.ready, pk.stats],
                                 [instance_id, event, self.channel, hub.hub])
        return _status(reply, instance_id)
