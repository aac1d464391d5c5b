"""The kinds of work item a stream hands out (orchestration episodes, activities, entity batches): how
each is named for work-item filters, claimed, renewed and handed back.

A work kind knows the store, and of the rules only what :data:`FailClaimed` and :data:`FailBatch` say:
how to end a claimed item that can never go to a worker (the engine wires them to
``Orchestrations.fail_claimed`` and ``Entities.fail_batch``). So the rules may use the dispatcher
that holds the work kinds, and nothing here imports them back."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from .. import tracing
from .._proto import orchestrator_service_pb2 as pb
from ..protocol import ACTIVITY, ENTITY, ORCHESTRATION, EntityMessage, entity_name
from ..store import Claim, Store
from ..store.keys import HubKeys
from . import events, spans

log = logging.getLogger(__name__)

# name -> accepted versions (empty: any version); None: no filtering. As the SDK's reference backend.
NameFilter = dict[str, frozenset[str]] | None


def name_filter(filters) -> NameFilter:
    """The accepted names and versions of OrchestrationFilter, ActivityFilter or EntityFilter messages
    (an entity filter names no versions). No filter message: nothing is accepted."""
    accepted: dict[str, frozenset[str]] = {}
    for f in filters:
        accepted[f.name] = accepted.get(f.name, frozenset()) | frozenset(getattr(f, "versions", ()))
    return accepted


def accepts(flt: NameFilter, name: str, version: str) -> bool:
    if flt is None:
        return True
    versions = flt.get(name)
    return versions is not None and (not versions or version in versions)


# (hub, instance id, claim token, claimed fields, error type, message): fail the orchestration of a
# claimed episode that cannot go to a worker.
FailClaimed = Callable[[HubKeys, str, str, dict, str, str], Awaitable[None]]
# (hub, entity id, claim token, the batch, failure): fail the operations of a claimed entity batch that
# cannot go to a worker; the state stays.
FailBatch = Callable[[HubKeys, str, str, list[EntityMessage], pb.TaskFailureDetails], Awaitable[None]]


class WorkKind:
    """How one kind of work item is named, claimed, renewed and handed back."""

    code: str  # protocol.ORCHESTRATION, protocol.ACTIVITY, protocol.ENTITY
    look_after_done = False  # finishing an item may have queued its partition again

    def __init__(self, store: Store, max_message_bytes: int) -> None:
        self.store = store
        self.max_message_bytes = max_message_bytes

    async def names(self, hub: HubKeys, items: list[str]) -> list[tuple[str | None, str]]:
        """(name or None if gone, version or "") of each item, for work-item filters."""
        raise NotImplementedError

    async def claim(self, hub: HubKeys, item: str, token: str,
                    lease_ms: int) -> tuple[pb.WorkItem, dict[str, bytes] | None] | None:
        """Claim a queued item: (its work item, fields to keep for its completion), or None if it is gone."""
        raise NotImplementedError

    async def renew(self, hub: HubKeys, partition: int, items: list[tuple[str, str]], lease_ms: int) -> list[str]:
        raise NotImplementedError

    async def release(self, hub: HubKeys, item: str, token: str, keep_token: bool = False) -> bool:
        """Hand an item back under its claim (False: ``token`` is not its claim). With ``keep_token`` (its
        worker may still report) a completion under the token applies until the next claim takes it."""
        raise NotImplementedError


class OrchestrationWork(WorkKind):
    code = ORCHESTRATION
    # events that arrived during the episode make the instance ready again: the completion offers it

    async def names(self, hub, items):
        return await self.store.instance_names(hub, items)

    def __init__(self, store: Store, max_message_bytes: int, fail_claimed: FailClaimed) -> None:
        super().__init__(store, max_message_bytes)
        self.fail_claimed = fail_claimed

    async def claim(self, hub, item, token, lease_ms):
        claim = await self.store.claim_orchestration(hub, item, token, lease_ms, events.orchestrator_started())
        return None if claim is None else await self.hand_out(hub, claim)

    async def hand_out(self, hub: HubKeys, claim: Claim) -> tuple[pb.WorkItem, dict[str, bytes]] | None:
        """The work item of a claimed episode and the fields to keep for its completion; None when it can
        never be handed out (then the orchestration fails instead)."""
        item, token = claim.instance_id, claim.token
        new_events = [claim.fields["episode_start"], *claim.new_events]
        work_item = events.orchestrator_work_item(item, claim.fields.get("execution_id"), claim.past_events,
                                                  new_events, token)
        if (ref := tracing.ref_of(claim.fields)) is not None:
            spans.handed_out(work_item.orchestratorRequest, ref, claim.fields)
        problem = self._unsendable(claim.fields, work_item)
        if problem is not None:
            with tracing.logged(ref):
                log.warning("task hub %r: orchestration %r fails: %s", hub.hub, item, problem[1])
            await self.fail_claimed(hub, item, token, claim.fields, *problem)
            return None
        return work_item, claim.fields

    def _unsendable(self, fields: dict[str, bytes], work_item: pb.WorkItem) -> tuple[str, str] | None:
        """(error type, message) when a claimed episode cannot go to a worker, else None."""
        if "overflow" in fields:  # an event found no room: see deliver_event.lua
            error_type, _, message = fields["overflow"].decode().partition("\n")
            return error_type, message
        size = work_item.ByteSize()
        if size > self.max_message_bytes:
            return "WorkItemTooLarge", (f"the orchestration's work item (its history and new events) is {size} "
                                        f"bytes; a message may carry {self.max_message_bytes} bytes "
                                        "(--max-message-bytes)")
        return None

    async def renew(self, hub, partition, items, lease_ms):
        return await self.store.renew_orchestration_leases(hub, partition, items, lease_ms)

    async def release(self, hub, item, token, keep_token=False):
        return await self.store.release_orchestration(hub, item, token, keep_token)


class ActivityWork(WorkKind):
    code = ACTIVITY

    async def names(self, hub, items):
        names = []
        for raw in await self.store.activity_requests(hub, items):
            request = None if raw is None else pb.ActivityRequest.FromString(raw)
            names.append((None, "") if request is None else (request.name, request.version.value))
        return names

    async def claim(self, hub, item, token, lease_ms):
        payload = await self.store.claim_activity(hub, item, token, lease_ms)
        return None if payload is None else (events.activity_work_item(payload, token), None)

    async def renew(self, hub, partition, items, lease_ms):
        return await self.store.renew_activity_leases(hub, partition, items, lease_ms)

    async def release(self, hub, item, token, keep_token=False):
        return await self.store.release_activity(hub, item, token, keep_token)


class EntityWork(WorkKind):
    """Batches of entity operations, named by the entity id; filters name entities."""

    code = ENTITY
    look_after_done = True  # operations that arrived during the batch make the entity ready again

    def __init__(self, store: Store, max_message_bytes: int, fail_batch: FailBatch) -> None:
        super().__init__(store, max_message_bytes)
        self.fail_batch = fail_batch

    async def names(self, hub, items):
        return [(entity_name(item), "") for item in items]

    async def claim(self, hub, item, token, lease_ms):
        claim = await self.store.claim_entity(hub, item, token, lease_ms)
        if claim is None:
            return None
        batch = [EntityMessage.decode(m) for m in claim.messages]
        work_item = events.entity_work_item(item, claim.state, [m.payload for m in batch], token)
        size = work_item.ByteSize()
        if size > self.max_message_bytes:  # the state and one operation: the operation fails
            await self.fail_batch(hub, item, token, batch, pb.TaskFailureDetails(
                errorType="WorkItemTooLarge", isNonRetriable=True,
                errorMessage=f"the entity's state and this operation make a work item of {size} bytes; a message "
                             f"may carry {self.max_message_bytes} bytes (--max-message-bytes)"))
            return None
        return work_item, {"messages": claim.messages}

    async def renew(self, hub, partition, items, lease_ms):
        return await self.store.renew_entity_leases(hub, partition, items, lease_ms)

    async def release(self, hub, item, token, keep_token=False):
        return await self.store.release_entity(hub, item, token, keep_token)
