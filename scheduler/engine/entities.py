"""The rules of durable entities: what reaches them, what a batch result does, locks, clean-up.

An entity (``@name@key``) is kept by the store like an instance of its own kind
(store/entities.py). Messages reach it from a client (:meth:`Entities.signal`), from an
orchestration's episode (a signal, a call, a lock request, an unlock: :func:`from_orchestration`)
and from another entity's batch (a signal); the last two leave through the sender's outbox
and the relay hands them to :meth:`Entities.deliver`. Lock requests and unlocks never reach
a worker: the store runs them (lock sets in one global order: sorted ids, so two critical
sections never deadlock). Operations go to workers in batches under a lease (work_kinds.EntityWork);
:meth:`Entities.complete_batch` is the one entry point of a batch result: the state, the
results for calling orchestrations and the batch's signals and new orchestrations, in one step.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from .. import errors, tracing
from .._proto import orchestrator_service_pb2 as pb
from ..config import Limits
from ..protocol import (CALL, ENTITY, LOCK, SIGNAL, TERMINAL, UNLOCK, EntityMessage, OutboxMessage, due_ms,
                        is_entity_id, is_valid_id, new_id, quote)
from ..store import Store
from ..store.keys import HubKeys
from ..store.scripts import Code
from . import events, spans
from .dispatcher import Dispatcher

log = logging.getLogger(__name__)

CLEAN_PAGE = 500  # entities one CleanEntityStorage call looks at
MAX_LOCK_SET = 256  # entities one critical section may lock


def signal_message(entity_id: str, operation: str, payload: pb.HistoryEvent | None = None, *,
                   request_id: str | None = None, input_: str | None = None,
                   scheduled: object = None) -> EntityMessage:
    """A signal for an entity: ``payload`` (an EntityOperationSignaled event as an orchestration sent
    it) or one built from the operation, input and scheduled time (a Timestamp)."""
    if payload is None:
        signaled = pb.EntityOperationSignaledEvent(requestId=request_id or new_id(), operation=operation,
                                                   input=events.text(input_),
                                                   targetInstanceId=events.text(entity_id))
        if scheduled is not None:
            signaled.scheduledTime.CopyFrom(scheduled)
        payload = pb.HistoryEvent(eventId=-1, entityOperationSignaled=signaled)
    signaled = payload.entityOperationSignaled
    due = str(due_ms(signaled.scheduledTime)) if signaled.HasField("scheduledTime") else ""
    return EntityMessage(SIGNAL, signaled.requestId, arg=due, payload=payload.SerializeToString())


def from_orchestration(action: pb.OrchestratorAction, instance_id: str,
                       execution_id: str) -> tuple[bytes, OutboxMessage]:
    """(history event for the orchestration, outbox message for the entity) of a SendEntityMessage
    action; InvalidRequest when it names no valid entity or id."""
    message = action.sendEntityMessage
    kind = message.WhichOneof("EntityMessageType")
    body = getattr(message, kind) if kind else None
    stamped = pb.HistoryEvent(eventId=-1)
    stamped.timestamp.GetCurrentTime()
    if kind == "entityOperationSignaled":
        target = body.targetInstanceId.value
        stamped.entityOperationSignaled.CopyFrom(body)
        record = signal_message(target, body.operation, stamped)
    elif kind == "entityOperationCalled":
        target = body.targetInstanceId.value
        body.parentInstanceId.value = instance_id  # results go to this orchestration, whatever it said
        if not body.parentExecutionId.value:
            body.parentExecutionId.value = execution_id
        stamped.entityOperationCalled.CopyFrom(body)
        record = EntityMessage(CALL, body.requestId, instance_id, payload=stamped.SerializeToString())
    elif kind == "entityLockRequested":
        lock_set = tuple(sorted(set(body.lockSet)))
        target = lock_set[0] if lock_set else ""
        if len(lock_set) > MAX_LOCK_SET:
            raise errors.InvalidRequest(f"a lock request names {len(lock_set)} entities; a critical section may "
                                        f"lock at most {MAX_LOCK_SET}")
        bad = [e for e in lock_set if not is_entity_id(e)]
        if bad:
            raise errors.InvalidRequest(f"a lock request names {quote(bad[0])}, which is not an entity id")
        granted = events.history_event(entityLockGranted=pb.EntityLockGrantedEvent(
            criticalSectionId=body.criticalSectionId))
        record = EntityMessage(LOCK, body.criticalSectionId, instance_id, "0", lock_set, granted)
    elif kind == "entityUnlockSent":
        target = body.targetInstanceId.value
        record = EntityMessage(UNLOCK, body.criticalSectionId, instance_id)
    else:
        raise errors.InvalidRequest("a sendEntityMessage action carries no message")
    if not is_entity_id(target):
        raise errors.InvalidRequest(f"{kind} names {quote(target)}, which is not an entity id (@name@key)")
    if not is_valid_id(record.id):
        raise errors.InvalidRequest(f"{kind} carries an invalid request or critical section id {quote(record.id)}")
    event = events.history_event(action.id, **{kind: body})
    return event, OutboxMessage(f"{instance_id}:{execution_id}:{action.id}", "entity", target, record.encode())


class Entities:
    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher

    @property
    def limits(self) -> Limits:
        return self.store.limits

    # -- messages ------------------------------------------------------------------------------

    async def signal(self, hub: HubKeys, entity_id: str, operation: str, input_: str | None, request_id: str,
                     scheduled=None) -> None:
        """A client's signal (SignalEntity): applied once per request id; a signal whose scheduled time
        has not come waits for it. EntityQueueFull when the entity has no room for it."""
        message = signal_message(entity_id, operation, request_id=request_id, input_=input_, scheduled=scheduled)
        code, readied = await self.store.deliver_entity_message(hub, entity_id, "r:" + request_id, message.encode())
        if code in (Code.INBOX_FULL, Code.TOO_LARGE):
            raise errors.EntityQueueFull(entity_id, self.limits.max_inbox_events, self.limits.max_work_item_bytes)
        if readied:  # not when its batch is out or it waits already: a claim would be refused
            self.dispatcher.offer(hub.hub, ENTITY, [entity_id])

    async def deliver(self, hub: HubKeys, message: OutboxMessage) -> OutboxMessage | None:
        """Deliver a message from an outbox (see relay.py); returns the notice for the orchestration whose
        call the entity had no room for (the call fails), if any."""
        code, readied = await self.store.deliver_entity_message(hub, message.target, message.message_id,
                                                                message.payload)
        if readied:
            self.dispatcher.offer(hub.hub, ENTITY, [message.target])
        if code not in (Code.INBOX_FULL, Code.TOO_LARGE):
            return None
        entity = EntityMessage.decode(message.payload)
        text = (f"entity '{message.target}' has no room for more operations (at most {self.limits.max_inbox_events}"
                f" waiting, {self.limits.max_work_item_bytes} bytes)")
        if entity.kind != CALL:
            log.warning("task hub %r: a signal (%s) was dropped: %s", hub.hub, entity.id, text)
            return None
        failure = pb.TaskFailureDetails(errorType="EntityQueueFull", errorMessage=text, isNonRetriable=True)
        return OutboxMessage(f"{message.message_id}:refused", "event", entity.parent,
                             events.entity_result(entity.id, None, failure))

    # -- batch results ---------------------------------------------------------------------------

    async def complete_batch(self, hub: HubKeys, entity_id: str, token: str, result: pb.EntityBatchResult) -> None:
        """Apply a worker's batch result under its claim (LeaseLost, with nothing changed, when ``token`` is not
        the current claim): the operations with a result are done (the others run again in the next batch);
        a result with none fails them all (with the batch's failure, if it has one); a state past its limit
        fails them all and keeps the state as it was."""
        with self.dispatcher.reported(hub, ENTITY, entity_id, token):
            kept = self.dispatcher.claimed_fields(token)
            raw = kept["messages"] if kept else await self.store.claimed_messages(hub, entity_id, token)
            if raw is None:
                raise errors.LeaseLost(entity_id)
            batch = [EntityMessage.decode(m) for m in raw]
            results = list(result.results)[:len(batch)]
            failure, state = None, False
            if not results:
                failure = result.failureDetails if result.HasField("failureDetails") else pb.TaskFailureDetails(
                    errorType="EntityBatchFailed", errorMessage="the worker returned no result for the operations")
            else:
                state = result.entityState.value if result.HasField("entityState") and result.entityState.value \
                    else None
                size = 0 if state is None else len(state.encode())
                if size > self.limits.max_state_bytes:
                    failure, state = pb.TaskFailureDetails(
                        errorType="EntityStateTooLarge", isNonRetriable=True,
                        errorMessage=f"the state of entity '{entity_id}' would be {size} bytes; a reply may carry "
                                     f"{self.limits.max_state_bytes} bytes (--max-message-bytes)"), False
            done = len(batch) if failure is not None else len(results)
            messages = list(_replies(entity_id, batch[:done], results, failure))
            if failure is None:
                messages += _actions(hub, entity_id, result.actions)
            await self.store.complete_entity(hub, entity_id, token, done, state, [m.encode() for m in messages])
        if tracing.active is not None:
            await self._trace(hub, entity_id, batch[:done], results, failure)

    async def _trace(self, hub: HubKeys, entity_id: str, done: list[EntityMessage], results: list[pb.OperationResult],
                     failure: pb.TaskFailureDetails | None) -> None:
        """Emit the spans of the calls among the operations ``done``, each a child of its calling orchestration's
        span (one read of the callers' ``trace`` fields; signals carry no trace context in this contract)."""
        calls = [(i, m) for i, m in enumerate(done) if m.kind == CALL and m.parent]
        if not calls:
            return
        try:
            traces = await self.store.instance_fields(hub, [m.parent for _, m in calls], ("trace",))
        except errors.StoreError:
            return  # the batch is applied; its spans are not worth an error
        for (i, message), (raw,) in zip(calls, traces):
            ref = None if raw is None else tracing.SpanRef.decode(raw)
            if ref is not None:
                spans.entity_call(ref, entity_id, message.parent, pb.HistoryEvent.FromString(message.payload),
                                  failure is not None or results[i].HasField("failure"))

    async def fail_batch(self, hub: HubKeys, entity_id: str, token: str, batch: list[EntityMessage],
                         failure: pb.TaskFailureDetails) -> None:
        """End a claimed batch that cannot go to a worker: its operations fail, the state stays."""
        log.warning("task hub %r: a batch of entity %r fails: %s", hub.hub, entity_id, failure.errorMessage)
        messages = [m.encode() for m in _replies(entity_id, batch, [], failure)]
        await self.store.complete_entity(hub, entity_id, token, len(batch), False, messages)
        self.dispatcher.finished(hub.hub, ENTITY, entity_id, token)

    # -- clean-up ------------------------------------------------------------------------------

    async def clean(self, hub: HubKeys, remove_empty: bool, release_orphaned_locks: bool,
                    after: str | None) -> tuple[int, int, str | None]:
        """CleanEntityStorage over one page of entities after ``after``: (entities removed, locks released,
        where the next page starts or None). A lock is orphaned when the orchestration holding it is gone
        or has ended; an entity is empty with no state, nothing waiting, no lock and no batch out."""
        ids, more = await self.entity_page(hub, "", after, CLEAN_PAGE)
        sections: list[str | None] = [None] * len(ids)
        if release_orphaned_locks:
            locks = await self.store.entity_locks(hub, ids)
            holders = sorted({holder for holder, _ in locks if holder})
            found = await asyncio.gather(*(self.store.get_instance(hub, holder) for holder in holders))
            ended = {holder for holder, fields in zip(holders, found)
                     if fields is None or fields["status"].decode() in TERMINAL}
            sections = [section if holder in ended else None for holder, section in locks]
        removed = released = 0
        for entity_id, section in zip(ids, sections):
            if section is None and not remove_empty:
                continue
            gone, freed = await self.store.clean_entity(hub, entity_id, section, remove_empty)
            removed, released = removed + gone, released + freed
        return removed, released, (ids[-1] if more else None)

    async def entity_page(self, hub: HubKeys, prefix: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` entity ids that start with ``prefix``, after ``after``, in one order over every
        partition (byte order of the ids); and whether more follow."""
        merged: list[str] = []
        more = False
        for p in range(hub.partitions):
            ids = await self.store.entity_ids(hub, p, prefix, after, limit + 1)
            more = more or len(ids) > limit
            merged.extend(ids[:limit])
        merged.sort(key=lambda i: i.encode())
        more = more or len(merged) > limit
        return merged[:limit], more


def _replies(entity_id: str, batch: list[EntityMessage], results: list[pb.OperationResult],
             failure: pb.TaskFailureDetails | None) -> Iterator[OutboxMessage]:
    """The answers to the calls among ``batch`` (in order with ``results``; all ``failure`` if given)."""
    for i, message in enumerate(batch):
        if message.kind == CALL:
            event = events.entity_result(message.id, None if failure is not None else results[i], failure)
            yield OutboxMessage(f"{entity_id}|{message.id}", "event", message.parent, event)


def _actions(hub: HubKeys, entity_id: str, actions) -> list[OutboxMessage]:
    """The signals and new orchestrations of a batch, as outbox messages (invalid ones are dropped)."""
    messages = []
    for action in actions:
        kind = action.WhichOneof("operationActionType")
        if kind == "sendSignal":
            s = action.sendSignal
            if not is_entity_id(s.instanceId):
                log.warning("task hub %r: entity %r signalled %s, which is not an entity id: dropped", hub.hub,
                            entity_id, quote(s.instanceId))
                continue
            record = signal_message(s.instanceId, s.name, input_=s.input.value if s.HasField("input") else None,
                                    scheduled=s.scheduledTime if s.HasField("scheduledTime") else None)
            messages.append(OutboxMessage(new_id(), "entity", s.instanceId, record.encode()))
        elif kind == "startNewOrchestration":
            o = action.startNewOrchestration
            instance_id = o.instanceId or new_id()
            if not is_valid_id(instance_id) or instance_id.startswith("@"):
                log.warning("task hub %r: entity %r started an orchestration with the invalid id %s: dropped",
                            hub.hub, entity_id, quote(instance_id))
                continue
            started = pb.ExecutionStartedEvent(name=o.name, orchestrationInstance=pb.OrchestrationInstance(
                instanceId=instance_id, executionId=events.text(new_id())))
            for f in ("version", "input", "parentTraceContext"):
                if o.HasField(f):
                    getattr(started, f).CopyFrom(getattr(o, f))
            if o.HasField("scheduledTime"):
                started.scheduledStartTimestamp.CopyFrom(o.scheduledTime)
            messages.append(OutboxMessage(new_id(), "start", instance_id, events.history_event(executionStarted=started)))
    return messages
