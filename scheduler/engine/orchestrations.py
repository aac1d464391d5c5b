"""The rules of orchestrations: what each client call and each worker result does to them.

Each method takes the task hub it acts in and makes its change in one atomic store
step; it then tells this replica's dispatcher about work it made (offers) and its
waiters about status changes it made, which saves them the pub/sub round trip.

- :meth:`Orchestrations.complete_episode` is the one entry point of a worker's episode
  result: continue-as-new, the history limit, a sub-orchestration's parent and a
  recursive termination are decided here.
- :meth:`Orchestrations.terminate` is the one way to terminate, whoever asks (a client,
  a parent's episode through the relay).
- :meth:`Orchestrations.rewind` runs a failed orchestration again (see :mod:`.rewind`).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from google.protobuf import timestamp_pb2, wrappers_pb2

from .. import errors, tracing
from .._proto import orchestrator_service_pb2 as pb
from ..protocol import ACTIVITY, ORCHESTRATION, TERMINAL, claim_token, due_ms, instance_of, new_id
from ..store import Claim, NewInstance, Store
from ..store.keys import HubKeys, partition_of
from ..store.scripts import Code
from . import events, rewind, spans, subtree
from .dispatcher import Dispatcher
from .episodes import (Episode, failed, interpret, limit_failure, next_execution, overflow_failure,
                       parent_notification)
from .waiters import Waiters


def new_instance(started: pb.ExecutionStartedEvent, at: timestamp_pb2.Timestamp | None = None,
                 request_time: str | None = None, replaceable: tuple[str, ...] = (),
                 same_is_done: bool = False) -> NewInstance:
    """The store record of an instance whose first event is ``started``, stamped ``at`` (default: now)."""
    return instance_record(pb.HistoryEvent(eventId=-1, executionStarted=started), at, request_time, replaceable,
                           same_is_done)


def instance_record(event: pb.HistoryEvent, at: timestamp_pb2.Timestamp | None = None,
                    request_time: str | None = None, replaceable: tuple[str, ...] = (),
                    same_is_done: bool = False) -> NewInstance:
    """Like :func:`new_instance`, from the start event itself (eventId -1, its ``executionStarted`` set),
    which it stamps: for callers that build the event in place rather than copy an ExecutionStartedEvent in.

    The hash keeps short scalar fields only (readable with ``redis-cli HGETALL``, and compact:
    one value over 64 bytes would switch the hash to Redis' hashtable encoding and double the
    memory of a pending instance); the input and the tags stay in the start event."""
    started = event.executionStarted
    fields: dict[str, str | bytes] = {"name": started.name,
                                      "execution_id": started.orchestrationInstance.executionId.value}
    if started.HasField("version"):
        fields["version"] = started.version.value
    if started.HasField("scheduledStartTimestamp"):
        fields["scheduled_start"] = started.scheduledStartTimestamp.ToJsonString()
    if request_time is not None:
        fields["request_time"] = request_time
    if started.HasField("parentInstance"):
        parent = started.parentInstance
        fields.update(parent_instance_id=parent.orchestrationInstance.instanceId,
                      parent_execution_id=parent.orchestrationInstance.executionId.value,
                      parent_task_id=str(parent.taskScheduledId))
    if tracing.active is not None:  # the orchestration's span: its ids now, the span when it ends
        parent = started.parentTraceContext.traceParent if started.HasField("parentTraceContext") else None
        ref = tracing.active.new_orchestration(started.name, parent)
        if ref is not None:
            fields["trace"] = ref.encode()
    if at is not None:
        event.timestamp.CopyFrom(at)
    else:
        event.timestamp.FromNanoseconds(time.time_ns())
    due = due_ms(started.scheduledStartTimestamp) if started.HasField("scheduledStartTimestamp") else None
    return NewInstance(started.orchestrationInstance.instanceId, fields, event.SerializeToString(), due,
                       replaceable, same_is_done)


TERMINATE_READS = 5  # reads of an instance that changes between the read and the termination, at most


class Orchestrations:
    def __init__(self, store: Store, dispatcher: Dispatcher, waiters: Waiters) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.waiters = waiters

    # -- client calls ----------------------------------------------------------------------

    async def start(self, hub: HubKeys, new: NewInstance) -> None:
        if new.due_ms is not None and new.due_ms > time.time() * 1000:  # the promoter makes it ready
            created_ms = await self.store.create_instance(hub, new)
            if new.due_ms <= created_ms:  # by Redis' clock it is due already
                self.dispatcher.offer(hub.hub, ORCHESTRATION, [new.instance_id])
            return

        async def create(claim):  # made ready at once (a past or 1970 start too)
            if claim is None:
                await self.store.create_instance(hub, new)
                return None
            return (await self.store.create_instance_and_claim(hub, new, *claim))[1]

        await self._ready(hub, new.instance_id, create)

    async def _ready(self, hub: HubKeys, instance_id: str,
                     step: Callable[[tuple[str, int, bytes] | None], Awaitable[Claim | None]]) -> None:
        """Run a store step that makes ``instance_id`` ready, and hand its episode to a stream of this
        replica: claimed in the same step for a stream with room (``step`` gets the claim's token,
        lease and episode start, and returns the claim or None), or offered (``step`` gets None)."""
        stream = self.dispatcher.reserve(hub.hub, ORCHESTRATION, 1)
        if stream is None:
            await step(None)
            self.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])
            return
        token = claim_token(hub.hub, partition_of(instance_id, hub.partitions), ORCHESTRATION, instance_id)
        try:
            claim = await step((token, stream.lease_ms, events.orchestrator_started()))
            handed = None if claim is None else await self.dispatcher.kinds[ORCHESTRATION].hand_out(hub, claim)
        except BaseException:
            stream.unreserve(ORCHESTRATION, 1)
            raise
        if handed is None:  # not claimed (or it cannot be handed out, and failed)
            stream.unreserve(ORCHESTRATION, 1)
            self.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])
            return
        await self.dispatcher.hand_to(stream, hub, ORCHESTRATION, 1, [(instance_id, token, *handed)])

    async def restart(self, hub: HubKeys, instance_id: str, with_new_id: bool) -> str:
        """Start a terminal instance again, with its name, version and input (as the SDK's reference
        does); under the same id it replaces the finished instance. Returns the id it runs under."""
        h = await self.store.get_instance(hub, instance_id)
        if h is None:
            raise errors.InstanceNotFound(instance_id)
        status = h["status"].decode()
        if status not in TERMINAL:
            raise errors.FailedPrecondition(
                f"orchestration instance '{instance_id}' is {status}; only a completed, failed or "
                "terminated instance can be restarted")
        previous = pb.HistoryEvent.FromString(h["start_event"]).executionStarted
        new_instance_id = new_id() if with_new_id else instance_id
        started = pb.ExecutionStartedEvent(name=previous.name, orchestrationInstance=pb.OrchestrationInstance(
            instanceId=new_instance_id, executionId=wrappers_pb2.StringValue(value=new_id())))
        events.copy_set(previous, started, fields=("version", "input"))
        replaceable = () if with_new_id else tuple(sorted(TERMINAL))  # replace the finished one, nothing else
        await self.start(hub, new_instance(started, replaceable=replaceable))
        return new_instance_id

    async def raise_event(self, hub: HubKeys, instance_id: str, name: str, payload: str | None) -> None:
        await self.store.raise_event(hub, instance_id, events.event_raised(name, payload))

    async def suspend(self, hub: HubKeys, instance_id: str, reason: str | None) -> None:
        await self.store.suspend_instance(hub, instance_id, events.execution_suspended(reason))

    async def resume(self, hub: HubKeys, instance_id: str, reason: str | None) -> None:
        await self.store.resume_instance(hub, instance_id, events.execution_resumed(reason))

    async def terminate(self, hub: HubKeys, instance_id: str, output: str | None, recursive: bool,
                        force: bool = False, message_id: str = "") -> str | None:
        """Terminate an instance (see Store.terminate_instance): one never dispatched ends at once,
        a running one when its worker applies the event (with ``force``: at once, its worker's episode
        is refused). Whether it ends at once is decided by the store step alone; this prepares the
        message telling a sub-orchestration's parent, for the instance it read, and reads again when
        the step finds another (created again, rewound meanwhile). With ``recursive``, the children are
        terminated when the termination takes effect (see :meth:`_apply`). A termination passed on
        through the outbox (``message_id``) is applied once. Returns the status before (None when this
        message was applied before)."""
        event = events.execution_terminated(output, recursive)
        for _ in range(TERMINATE_READS):
            h = await self.store.get_instance(hub, instance_id)
            if h is None:
                raise errors.InstanceNotFound(instance_id)
            told = parent_notification(h, "TERMINATED", output, None)
            read_as = f"{h.get('execution_id', b'').decode()}/{h.get('rewinds', b'').decode()}"
            code, before = await self.store.terminate_instance(
                hub, instance_id, event, output, b"" if told is None else told.encode(), force, read_as, message_id)
            if code is not Code.CHANGED:
                if force and code is Code.OK:
                    self.waiters.status_changed(hub.hub, instance_id)
                if code is Code.OK and (before == "PENDING" or force and before not in TERMINAL) and \
                        (ref := tracing.ref_of(h)) is not None:  # it ended at once
                    spans.orchestration_ended(ref, instance_id, h, "TERMINATED")
                return before
        raise errors.StoreUnavailable(f"orchestration instance '{instance_id}' kept changing while it was being "
                                      "terminated; nothing was written, try again")

    async def rewind(self, hub: HubKeys, instance_id: str, reason: str | None) -> None:
        """RewindInstance: a FAILED instance runs again, its worker rewinds it (see :mod:`.rewind`);
        FailedPrecondition, with nothing changed, for an instance in any other status."""
        code, status = await self.store.rewind_instance(hub, instance_id, events.execution_rewound(reason))
        if code is Code.NOT_FOUND:
            raise errors.InstanceNotFound(instance_id)
        if code is not Code.OK:
            raise errors.FailedPrecondition(f"orchestration instance '{instance_id}' is {status}; only a failed "
                                            "instance can be rewound")
        self._rewound(hub, instance_id)

    async def rewind_child(self, hub: HubKeys, instance_id: str, message_id: str,
                           rewound: pb.ExecutionRewoundEvent) -> tuple[Code, str | None]:
        """Rewind a failed sub-orchestration for its rewound parent, once per message (see
        Store.rewind_instance for what it returns)."""
        code, status = await self.store.rewind_instance(hub, instance_id, rewind.child_event(rewound), message_id,
                                                        limited=False)
        if code is Code.OK:
            self._rewound(hub, instance_id)
        return code, status

    def _rewound(self, hub: HubKeys, instance_id: str) -> None:
        self.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])
        self.waiters.status_changed(hub.hub, instance_id)

    # -- worker results --------------------------------------------------------------------

    async def complete_episode(self, hub: HubKeys, instance_id: str, token: str,
                               response: pb.OrchestratorResponse, extra_events: list[bytes] = ()) -> None:
        """Apply a worker's episode result under its claim (LeaseLost, with nothing changed, when
        ``token`` is not the current claim). An episode that would pass a limit of the instance (its
        history, its next work item, its state) fails the orchestration instead, with a failure
        that says which limit: nothing of the episode was written. ``extra_events``: serialized
        history events the api layer adds before those of the actions (the Dapr port's version
        records and stalls), kept as they are; not with continue-as-new or a rewind."""
        with self.dispatcher.reported(hub, ORCHESTRATION, instance_id, token):
            await self._complete_episode(hub, instance_id, token, response, extra_events)

    async def _complete_episode(self, hub: HubKeys, instance_id: str, token: str,
                                response: pb.OrchestratorResponse, extra_events: list[bytes] = ()) -> None:
        h = self.dispatcher.claimed_fields(token)  # claimed through this replica: no read needed
        if h is None:
            h = await self._claimed_instance(hub, instance_id)
        ref = tracing.ref_of(h)
        with tracing.logged(ref):
            await self._apply_episode(hub, instance_id, token, h, ref, response, extra_events)

    async def _apply_episode(self, hub: HubKeys, instance_id: str, token: str, h: dict[str, bytes],
                             ref: tracing.SpanRef | None, response: pb.OrchestratorResponse,
                             extra_events: list[bytes] = ()) -> None:
        custom = response.customStatus.value if response.HasField("customStatus") else None
        episode = interpret(response, instance_id, h.get("execution_id", b"").decode(), h["name"].decode(), ref)
        episode.events[:0] = extra_events
        try:
            if episode.continue_as_new is not None:
                if "start_event" not in h:  # the claim's fields do not hold it
                    h = await self._claimed_instance(hub, instance_id)
                execution_id, first_events = next_execution(episode.continue_as_new, h["start_event"])
                await self.store.continue_as_new(hub, instance_id, token, execution_id, first_events, custom,
                                                 [m.encode() for m in episode.outbox])
                self.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])  # the new execution is ready
            elif episode.rewind is not None:
                await self._apply_rewind(hub, instance_id, token, h, episode.rewind)
            else:
                await self._apply(hub, instance_id, token, h, episode, custom)
        except errors.LimitExceeded as exc:
            await self._apply(hub, instance_id, token, h, limit_failure(exc), None, enforce_limits=False)

    async def fail_claimed(self, hub: HubKeys, instance_id: str, token: str, fields: dict[str, bytes],
                           error_type: str, message: str) -> None:
        """End a claimed episode that cannot be handed to a worker (an event had no room, the work
        item would be too large to send) by failing the orchestration with a clear failure."""
        await self._apply(hub, instance_id, token, fields, failed(-1, error_type, message), None,
                          enforce_limits=False)
        self.dispatcher.finished(hub.hub, ORCHESTRATION, instance_id, token)

    async def _claimed_instance(self, hub: HubKeys, instance_id: str) -> dict[str, bytes]:
        h = await self.store.get_instance(hub, instance_id)
        if h is None:
            raise errors.LeaseLost(instance_id)
        return h

    async def _apply(self, hub: HubKeys, instance_id: str, token: str, h: dict[str, bytes], episode: Episode,
                     custom: str | None, enforce_limits: bool = True) -> None:
        messages = list(episode.outbox)
        if episode.status is not None:
            notice = parent_notification(h, episode.status, episode.output, episode.failure)
            if notice is not None:
                messages.append(notice)
            if episode.status == "TERMINATED":
                messages += await self._recursive_termination(hub, instance_id, h, episode)
        # the activities go straight to a stream of this replica with room, claimed in the same step
        count = len(episode.activities)
        stream = self.dispatcher.reserve(hub.hub, ACTIVITY, count) if count else None
        tokens = [] if stream is None else [claim_token(hub.hub, partition_of(instance_id, hub.partitions), ACTIVITY,
                                                        item) for item, _ in episode.activities]
        # a caller waiting on this replica for the end gets the final state with the completion, unread
        with_state = episode.status is not None and self.waiters.watched(hub.hub, instance_id)
        try:
            completion = await self.store.complete_orchestration(
                hub, instance_id, token, episode.events, episode.status, episode.output, episode.failure, custom,
                episode.activities, episode.timers, [m.encode() for m in messages], enforce_limits,
                claim_activities=None if stream is None else (stream.lease_ms, tokens), with_state=with_state)
        except BaseException:
            if stream is not None:
                stream.unreserve(ACTIVITY, count)
            raise
        if completion.readied:  # events that arrived during the episode
            self.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])
        if stream is None:
            self.dispatcher.offer(hub.hub, ACTIVITY, [item for item, _ in episode.activities])
        else:
            await self.dispatcher.hand_to(stream, hub, ACTIVITY, count, [
                (item, claim, events.activity_work_item(payload, claim), None)
                for (item, payload), claim in zip(episode.activities, tokens)])
        if episode.status is not None:
            self.waiters.status_changed(hub.hub, instance_id, completion.state)
            if (ref := tracing.ref_of(h)) is not None:
                spans.orchestration_ended(ref, instance_id, h, episode.status, episode.failure)

    async def _apply_rewind(self, hub: HubKeys, instance_id: str, token: str, h: dict[str, bytes],
                            action: pb.RewindOrchestrationAction) -> None:
        """A worker's rewind of the history (see :mod:`.rewind`). It fails the orchestration instead when the
        episode was not one of a rewind, or the history is not a new execution of the instance."""
        try:
            if "rewinding" not in h:
                raise rewind.InvalidRewind("the worker rewound an orchestration that was not being rewound")
            plan = rewind.plan(action, instance_id)
        except rewind.InvalidRewind as exc:
            await self._apply(hub, instance_id, token, h, failed(-1, "InvalidArgument", str(exc)), None)
            return
        await self.store.rewind_orchestration(hub, instance_id, token, plan.history, plan.start_index, plan.fields,
                                              plan.activities, plan.timers, [m.encode() for m in plan.outbox])
        self.dispatcher.offer(hub.hub, ACTIVITY, [item for item, _ in plan.activities])
        self.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])  # the worker replays the new history

    async def _recursive_termination(self, hub: HubKeys, instance_id: str, h: dict[str, bytes],
                                     episode: Episode) -> list:
        """Messages terminating the children that have not ended, when the episode ended the instance
        because of a recursive ExecutionTerminated event (see :mod:`scheduler.engine.subtree`)."""
        history, delivered = await self.store.episode_events(hub, instance_id, int(h.get("claimed_n", b"0")))
        terminated = subtree.recursive_termination(delivered)
        if terminated is None:
            return []
        children = subtree.open_children([*history, *delivered, *episode.events])
        return subtree.termination_messages(h.get("execution_id", b"").decode(), children, terminated)

    async def complete_activity(self, hub: HubKeys, item: str, token: str, response: pb.ActivityResponse) -> None:
        """Deliver an activity's result to its orchestration under the activity's claim. A result that
        the orchestration's next work item has no room for fails the orchestration (at its next
        dispatch) with a failure that says so; the worker's call succeeds all the same."""
        result = events.activity_result(response)
        overflow = overflow_failure("ActivityResultTooLarge",
                                    f"the result of activity task {response.taskId} is {len(result)} bytes",
                                    self.store.limits)

        async def deliver(claim):  # the orchestration has a new event
            with self.dispatcher.reported(hub, ACTIVITY, item, token):
                if claim is None:
                    await self.store.complete_activity(hub, item, token, result, overflow)
                    return None
                return await self.store.complete_activity_and_claim(hub, item, token, result, overflow, *claim)

        await self._ready(hub, instance_of(item), deliver)
