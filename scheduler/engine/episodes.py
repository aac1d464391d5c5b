"""What a worker's episode result means: the history events, work and messages of its actions.

:func:`interpret` reads an OrchestratorResponse into an :class:`Episode`; the other
functions build what an episode's end implies (the next execution of a continue-as-new,
the message to a sub-orchestration's parent, the failure of an oversized history).
Applying an episode is :meth:`scheduler.engine.orchestrations.Orchestrations.complete_episode`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2, wrappers_pb2

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..config import Limits
from ..protocol import OutboxMessage, activity_item, due_ms, is_valid_id, new_id, quote
from ..tracing import SpanRef
from .entities import from_orchestration as entity_message
from .spans import activity_context, trace_context
from .events import copy_set, execution_completed, history_event, status_name, sub_orchestration_failed

_FINAL = (pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED, pb.ORCHESTRATION_STATUS_TERMINATED)
_CROSS_INSTANCE = ("createSubOrchestration", "sendEvent", "terminateOrchestration")


@dataclass
class Episode:
    """What a worker's episode result does: history events, work to queue, messages, and the end, if any."""

    events: list[bytes] = field(default_factory=list)
    activities: list[tuple[str, bytes]] = field(default_factory=list)  # (work item, serialized ActivityRequest)
    timers: list[tuple[int, bytes]] = field(default_factory=list)  # (fire time ms, serialized TimerFired event)
    status: str | None = None
    output: str | None = None
    failure: bytes | None = None
    continue_as_new: pb.CompleteOrchestrationAction | None = None
    rewind: pb.RewindOrchestrationAction | None = None  # the worker rewrote the history (see rewind.py)
    outbox: list[OutboxMessage] = field(default_factory=list)


def failed(event_id: int, error_type: str, message: str) -> Episode:
    """An episode that fails the orchestration with a non-retriable failure."""
    failure = pb.TaskFailureDetails(errorType=error_type, errorMessage=message, isNonRetriable=True)
    return Episode(events=[execution_completed(event_id, pb.ORCHESTRATION_STATUS_FAILED, None, failure)],
                   status="FAILED", failure=failure.SerializeToString())


def interpret(response: pb.OrchestratorResponse, instance_id: str, execution_id: str, name: str,
              trace: SpanRef | None = None) -> Episode:
    """Translate a worker's actions into history events, work and messages (with ``trace``, the
    orchestration's span, each activity request names its activity's span: see spans.py).

    An unknown action fails the instance with a failure saying so, rather than being dropped
    silently; so does an action that names an invalid instance or entity. A rewind (the history
    rewritten) is applied as a whole (see rewind.py)."""
    episode = Episode()
    for action in response.actions:
        kind = action.WhichOneof("orchestratorActionType")
        if kind == "scheduleTask":
            scheduled = _scheduled(action.scheduleTask)
            episode.events.append(history_event(action.id, taskScheduled=scheduled))
            episode.activities.append(activity(scheduled, action.id, instance_id, execution_id, trace))
        elif kind in _CROSS_INSTANCE:
            event, message = _cross_instance(action, instance_id, execution_id, name, trace)
            if not is_valid_id(message.target) or message.target.startswith("@"):
                return failed(action.id, "InvalidArgument", f"{kind} names an invalid instance id {quote(message.target)}"
                                                            " (ids starting with '@' are entities')")
            if event is not None:
                episode.events.append(event)
            episode.outbox.append(message)
        elif kind == "sendEntityMessage":
            try:
                event, message = entity_message(action, instance_id, execution_id)
            except errors.InvalidRequest as exc:
                return failed(action.id, "InvalidArgument", str(exc))
            episode.events.append(event)
            episode.outbox.append(message)
        elif kind == "createTimer":
            fire_at = action.createTimer.fireAt
            # the event keeps all its action carried, fields this contract does not know too (Dapr's name)
            created = pb.TimerCreatedEvent.FromString(action.createTimer.SerializeToString())
            episode.events.append(history_event(action.id, timerCreated=created))
            episode.timers.append(timer(fire_at, action.id))
        elif kind == "rewindOrchestration":
            return Episode(rewind=action.rewindOrchestration)
        elif kind == "completeOrchestration" and \
                action.completeOrchestration.orchestrationStatus == pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW:
            # what the episode sent before goes (an entity unlock, a signal); what it scheduled does not
            return Episode(continue_as_new=action.completeOrchestration, outbox=episode.outbox)
        elif kind == "completeOrchestration" and action.completeOrchestration.orchestrationStatus in _FINAL:
            done = action.completeOrchestration
            episode.status = status_name(done.orchestrationStatus)
            episode.output = done.result.value if done.HasField("result") else None
            failure = done.failureDetails if done.HasField("failureDetails") else None
            episode.failure = None if failure is None else failure.SerializeToString()
            episode.events.append(execution_completed(action.id, done.orchestrationStatus, episode.output, failure))
            episode.activities, episode.timers = [], []  # it ended: nothing it scheduled will be awaited
            return episode
        else:
            return failed(action.id, "NotSupported",
                          f"the orchestration used {kind}, which this server does not support yet")
    return episode


def _scheduled(task: pb.ScheduleTaskAction) -> pb.TaskScheduledEvent:
    scheduled = pb.TaskScheduledEvent(name=task.name, tags=task.tags)
    copy_set(task, scheduled)
    return scheduled


def activity(scheduled: pb.TaskScheduledEvent, task_id: int, instance_id: str, execution_id: str,
             trace: SpanRef | None = None) -> tuple[str, bytes]:
    """(work item, serialized ActivityRequest) of the activity task ``task_id`` that ``scheduled`` records."""
    request = pb.ActivityRequest(name=scheduled.name, taskId=task_id, tags=scheduled.tags,
                                 orchestrationInstance=pb.OrchestrationInstance(
                                     instanceId=instance_id, executionId=wrappers_pb2.StringValue(value=execution_id)))
    copy_set(scheduled, request)
    if trace is not None:
        request.parentTraceContext.CopyFrom(activity_context(trace, execution_id, task_id))
    return activity_item(instance_id, execution_id, task_id), request.SerializeToString()


def timer(fire_at: timestamp_pb2.Timestamp, timer_id: int) -> tuple[int, bytes]:
    """(fire time ms, serialized TimerFired event) of timer ``timer_id``."""
    fired = pb.HistoryEvent(eventId=-1, timerFired=pb.TimerFiredEvent(fireAt=fire_at, timerId=timer_id))
    fired.timestamp.CopyFrom(fire_at)
    return due_ms(fire_at), fired.SerializeToString()


def _cross_instance(action: pb.OrchestratorAction, instance_id: str, execution_id: str,
                    name: str, trace: SpanRef | None = None) -> tuple[bytes | None, OutboxMessage]:
    """(history event for the sender, outbox message) of an action that reaches another instance (with
    ``trace``, a sub-orchestration's span is a child of this orchestration's)."""
    kind = action.WhichOneof("orchestratorActionType")
    message_id = f"{instance_id}:{execution_id}:{action.id}"
    if kind == "createSubOrchestration":
        sub = action.createSubOrchestration
        created = pb.SubOrchestrationInstanceCreatedEvent(instanceId=sub.instanceId, name=sub.name, tags=sub.tags)
        started = pb.ExecutionStartedEvent(
            name=sub.name, tags=sub.tags,
            orchestrationInstance=pb.OrchestrationInstance(instanceId=sub.instanceId,
                                                           executionId=wrappers_pb2.StringValue(value=new_id())),
            parentInstance=pb.ParentInstanceInfo(
                taskScheduledId=action.id, name=wrappers_pb2.StringValue(value=name),
                orchestrationInstance=pb.OrchestrationInstance(
                    instanceId=instance_id, executionId=wrappers_pb2.StringValue(value=execution_id))))
        copy_set(sub, created, started)
        if trace is not None:
            started.parentTraceContext.CopyFrom(trace_context(trace))
        return history_event(action.id, subOrchestrationInstanceCreated=created), \
            OutboxMessage(message_id, "create", sub.instanceId, history_event(executionStarted=started))
    if kind == "sendEvent":
        send = action.sendEvent
        sent = pb.EventSentEvent(instanceId=send.instance.instanceId, name=send.name)
        raised = pb.EventRaisedEvent(name=send.name)
        if send.HasField("data"):
            sent.input.CopyFrom(send.data)
            raised.input.CopyFrom(send.data)
        return history_event(action.id, eventSent=sent), \
            OutboxMessage(message_id, "event", send.instance.instanceId, history_event(eventRaised=raised))
    stop = action.terminateOrchestration
    terminated = pb.ExecutionTerminatedEvent(recurse=stop.recurse)
    if stop.HasField("reason"):
        terminated.input.CopyFrom(stop.reason)
    return None, OutboxMessage(message_id, "terminate", stop.instanceId,
                               history_event(executionTerminated=terminated))


def next_execution(done: pb.CompleteOrchestrationAction, previous_start: bytes) -> tuple[str, list[bytes]]:
    """(execution id, events) of the execution a continue-as-new starts: its ExecutionStarted event
    (built from the previous one: same name, parent, tags and trace context; the new input and
    version), then the carried-over events."""
    execution_id = new_id()
    event = pb.HistoryEvent.FromString(previous_start)
    started = event.executionStarted
    started.orchestrationInstance.executionId.value = execution_id
    started.ClearField("scheduledStartTimestamp")
    started.ClearField("input")
    if done.HasField("result"):
        started.input.CopyFrom(done.result)
    if done.HasField("newVersion"):
        started.version.CopyFrom(done.newVersion)
    event.timestamp.FromNanoseconds(time.time_ns())
    return execution_id, [event.SerializeToString(), *(e.SerializeToString() for e in done.carryoverEvents)]


def parent_notification(h: dict[str, bytes], status: str, output: str | None,
                        failure: bytes | None) -> OutboxMessage | None:
    """The message telling a sub-orchestration's parent how it ended (``status``), if it has a parent."""
    parent = h.get("parent_instance_id")
    if parent is None:
        return None
    event = sub_orchestration_ended(int(h.get("parent_task_id", b"-1")), status, output, failure)
    child_execution = h.get("execution_id", b"").decode()
    rewinds = h.get("rewinds")  # an execution rewound can end more than once
    suffix = "" if rewinds is None else f":{rewinds.decode()}"
    return OutboxMessage(f"{child_execution}:done{suffix}", "event", parent.decode(), event,
                         h.get("parent_execution_id", b"").decode())


def sub_orchestration_ended(task_id: int, status: str, output: str | None, failure: bytes | None) -> bytes:
    """The event that tells a parent how its sub-orchestration task ``task_id`` ended (``status``)."""
    if status == "COMPLETED":
        done = pb.SubOrchestrationInstanceCompletedEvent(taskScheduledId=task_id)
        if output is not None:
            done.result.value = output
        return history_event(subOrchestrationInstanceCompleted=done)
    details = pb.TaskFailureDetails.FromString(failure) if failure else pb.TaskFailureDetails(
        errorType="Terminated" if status == "TERMINATED" else "Failed",
        errorMessage=f"the sub-orchestration ended {status}")
    return sub_orchestration_failed(task_id, details)


def limit_failure(exc: errors.LimitExceeded) -> Episode:
    """The episode that fails an orchestration whose episode would pass one of its limits instead."""
    if isinstance(exc, errors.HistoryLimitExceeded):
        return failed(-1, "HistoryLimitExceeded", f"{exc} (the limit is --max-history-events; continue-as-new "
                                                  "keeps long-running orchestrations small)")
    if isinstance(exc, errors.StateTooLarge):
        return failed(-1, "OutputTooLarge", str(exc))
    return failed(-1, "WorkItemTooLarge", f"{exc} (continue-as-new keeps long-running orchestrations small)")


def overflow_failure(error_type: str, what: str, limits: Limits) -> str:
    """The failure ("<error type>\n<message>") an instance gets when an event for it finds no room."""
    return (f"{error_type}\n{what}; the orchestration had no room left for it (at most "
            f"{limits.max_inbox_events} pending events and {limits.max_work_item_bytes} bytes of history "
            "and pending events)")
