"""Store operations that create, read and change one instance (mixed into the Store).

Each is one script in ``lua/`` (its header tells what it does in each status). The
lifecycle operations return the instance's status *before* the call, so the caller
can tell what happened. The hash fields ``prev_status`` and ``due_ms`` exist only
while an instance is SUSPENDED: the status to go back to, and the due time to go
back to (if it was waiting on the due set).
"""
from __future__ import annotations

from .common import unavailable_on_redis_errors
from .keys import HubKeys
from .records import Claim, NewInstance, claim_of, state_of
from .activities import DEFAULT_OVERFLOW
from .scripts import Code


class InstanceOps:
    """Uses the Store's ``_eval``, ``_write``, ``_outcome`` and ``limits``."""

    SCRIPTS: tuple[str, ...] = ("create_instance", "get_instance", "raise_event", "terminate_instance",
                                "suspend_instance", "resume_instance", "deliver_event", "rewind_instance")

    @unavailable_on_redis_errors
    async def create_instance(self, hub: HubKeys, new: NewInstance) -> int:
        """Write a new instance (see create_instance.lua); returns its creation time in ms.
        InstanceExists when the id is taken (``done_before`` when it is this very creation)."""
        created_ms, _ = await self._create_instance(hub, new, ("", 0, b""))
        return created_ms

    @unavailable_on_redis_errors
    async def create_instance_and_claim(self, hub: HubKeys, new: NewInstance, claim_token: str, lease_ms: int,
                                        episode_start: bytes) -> tuple[int, Claim | None]:
        """:meth:`create_instance`, and in the same step the claim of the instance under ``claim_token``
        (as :meth:`claim_orchestration`) if it is ready now: (creation time in ms, the claim or None)."""
        return await self._create_instance(hub, new, (claim_token, lease_ms, episode_start))

    async def _create_instance(self, hub: HubKeys, new: NewInstance,
                               claim: tuple[str, int, bytes]) -> tuple[int, Claim | None]:
        pk = hub.for_instance(new.instance_id)
        iid = new.instance_id
        args: list = [iid, "" if new.due_ms is None else new.due_ms, new.start_event, " ".join(new.replaceable),
                      "1" if new.same_is_done else "0", new.fields.get("execution_id", ""), *claim,
                      "1" if hub.keeps_by_created else "0", "1" if hub.indexes_all else "0"]
        for name, value in new.fields.items():
            args += [name, value]
        reply = await self._write(
            "create_instance", hub, pk,
            [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.due, pk.ready, pk.by_created, pk.stats,
             pk.timers(iid), pk.seen(iid), pk.by_completed, pk.leases, pk.by_status], args)
        _, (created_ms, *claimed) = self._outcome(reply, iid)
        return int(created_ms), (claim_of(iid, claim[0], claimed) if claimed else None)

    @unavailable_on_redis_errors
    async def get_instance(self, hub: HubKeys, instance_id: str) -> dict[str, bytes] | None:
        """The instance hash (field name -> raw value) plus ``start_event``, the serialized
        ExecutionStarted event of its current execution (input, tags); None if there is no such instance."""
        pk = hub.for_instance(instance_id)
        reply = await self._run("get_instance", hub.hub, hub.generation,
                                [pk.instance(instance_id), pk.inbox(instance_id), pk.history(instance_id)], (),
                                write=False)
        code, values = self._outcome(reply, instance_id, Code.NOT_FOUND)
        return None if code is Code.NOT_FOUND else state_of(*values)

    @unavailable_on_redis_errors
    async def raise_event(self, hub: HubKeys, instance_id: str, event: bytes) -> str:
        """Append a serialized EventRaised event to the inbox (see raise_event.lua); terminal
        instances are left unchanged. Returns the instance's status. InboxFull or WorkItemTooLarge,
        with nothing written, when the instance has no room for it."""
        pk = hub.for_instance(instance_id)
        reply = await self._write("raise_event", hub, pk, [pk.instance(instance_id), pk.inbox(instance_id), pk.ready],
                                  [instance_id, event, self.limits.max_inbox_events, self.limits.max_work_item_bytes])
        return self._status(reply, instance_id)

    @unavailable_on_redis_errors
    async def terminate_instance(self, hub: HubKeys, instance_id: str, event: bytes, output: str | None,
                                 notice: bytes = b"", force: bool = False, read_as: str = "",
                                 message_id: str = "") -> tuple[Code, str | None]:
        """End an instance not yet dispatched at once, or queue the serialized ExecutionTerminated event
        for a dispatched one (see terminate_instance.lua); with ``force``, end any at once. ``notice``:
        the outbox message telling its parent, written only if it is ended at once; ``read_as``: the
        "<execution id>/<rewinds>" of the instance it was prepared for ("": not checked). Returns (OK,
        status before), (CHANGED, None) when the instance is not the one read (nothing written), or
        (DONE_BEFORE, None) when the message ``message_id`` was applied before."""
        pk = hub.for_instance(instance_id)
        reply = await self._write(
            "terminate_instance", hub, pk,
            [pk.instance(instance_id), pk.inbox(instance_id), pk.history(instance_id), pk.due, pk.ready, pk.stats,
             pk.outbox, pk.by_completed, pk.leases, pk.timers(instance_id), pk.seen(instance_id), pk.by_status],
            [instance_id, event, "0" if output is None else "1", output or "", notice, "1" if force else "0",
             read_as, message_id])
        code, values = self._outcome(reply, instance_id, Code.CHANGED, Code.DONE_BEFORE)
        return code, values[0].decode() if code is Code.OK else None

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
        reply = await self._write(script, hub, pk, [pk.instance(instance_id), pk.inbox(instance_id), pk.due,
                                                    pk.ready, pk.stats, pk.by_status], [instance_id, event])
        return self._status(reply, instance_id)

    @unavailable_on_redis_errors
    async def deliver_event(self, hub: HubKeys, instance_id: str, message_id: str, event: bytes,
                            overflow: str = DEFAULT_OVERFLOW, execution: str = "") -> Code:
        """Append an event from another instance once (see deliver_event.lua); with ``execution``, only
        to that execution of it (or the one a rewind made of it). Returns OK when it was appended;
        DONE_BEFORE, NOT_FOUND, WRONG_STATUS (ended) or CHANGED (another execution) when nothing was;
        INBOX_FULL or TOO_LARGE when the instance had no room and was marked to fail with ``overflow``
        ("<error type>\n<message>")."""
        pk = hub.for_instance(instance_id)
        reply = await self._write("deliver_event", hub, pk, [pk.seen(instance_id), pk.instance(instance_id),
                                                             pk.inbox(instance_id), pk.ready],
                                  [instance_id, message_id, event, self.limits.max_inbox_events,
                                   self.limits.max_work_item_bytes, overflow, execution])
        return self._outcome(reply, instance_id, Code.DONE_BEFORE, Code.NOT_FOUND, Code.WRONG_STATUS,
                             Code.CHANGED, Code.INBOX_FULL, Code.TOO_LARGE)[0]

    @unavailable_on_redis_errors
    async def rewind_instance(self, hub: HubKeys, instance_id: str, event: bytes, message_id: str = "",
                              limited: bool = True) -> tuple[Code, str | None]:
        """Make a FAILED instance RUNNING again with the serialized ExecutionRewound ``event`` as its one
        pending event (see rewind_instance.lua); ``message_id``: the outbox message asking for it (applied
        once). Returns (OK, status before), (NOT_FOUND, None), (WRONG_STATUS, status) or (DONE_BEFORE, None),
        nothing written but for OK. With ``limited``, WorkItemTooLarge when the instance has no room for it."""
        pk = hub.for_instance(instance_id)
        reply = await self._write(
            "rewind_instance", hub, pk,
            [pk.instance(instance_id), pk.inbox(instance_id), pk.history(instance_id), pk.ready, pk.stats,
             pk.by_completed, pk.seen(instance_id), pk.by_status],
            [instance_id, event, message_id, self.limits.max_work_item_bytes if limited else 0])
        code, values = self._outcome(reply, instance_id, Code.NOT_FOUND, Code.WRONG_STATUS, Code.DONE_BEFORE)
        return code, values[0].decode() if values else None

    def _status(self, reply, instance_id: str) -> str:
        """The status in a lifecycle script's reply; InstanceNotFound for NOT_FOUND."""
        _, (status,) = self._outcome(reply, instance_id)
        return status.decode()
