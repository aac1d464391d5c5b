"""Translation between protocol messages and what the store keeps.

The instance hash holds scalar fields as plain strings so that ``HGETALL`` is
readable: ``name``, ``version``, ``status`` (``PENDING``, ``RUNNING``, ...),
``output``, ``custom_status``, ``execution_id``, ``parent_instance_id``,
``created_ms``/``updated_ms``/``completed_ms`` (epoch ms), ``scheduled_start``
and ``request_time`` (RFC 3339, exactly as given), ``failure`` (serialized
TaskFailureDetails) and ``start`` (where the start event is). The input and the
tags live only in the ExecutionStarted event: a value over 64 bytes would switch
the whole hash from Redis' compact listpack encoding to a hashtable, and that
alone would double the memory of a pending instance.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2, wrappers_pb2

from ._proto import orchestrator_service_pb2 as pb
from .store import NewInstance
from .validation import has_control_chars

STATUS_PREFIX = "ORCHESTRATION_STATUS_"


def status_name(value: int) -> str:
    """``pb.ORCHESTRATION_STATUS_PENDING`` -> ``"PENDING"``; ValueError for an unknown number."""
    return pb.OrchestrationStatus.Name(value)[len(STATUS_PREFIX):]


def status_value(name: str) -> int:
    return pb.OrchestrationStatus.Value(STATUS_PREFIX + name)


def due_ms(ts: timestamp_pb2.Timestamp) -> int:
    """Epoch ms of a timestamp, rounded up so that nothing due at it can be promoted early."""
    return ts.seconds * 1000 + math.ceil(ts.nanos / 1_000_000)


def _ts_from_ms(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _ts_from_text(text: bytes) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text.decode())
    return ts


def new_id() -> str:
    """A random 128-bit id in hex (what uuid4().hex gives, without building a UUID)."""
    return os.urandom(16).hex()


def new_instance(req: pb.CreateInstanceRequest, instance_id: str) -> NewInstance:
    """Build the store record of a validated CreateInstanceRequest."""
    execution_id = req.executionId.value if req.HasField("executionId") and req.executionId.value else new_id()
    fields: dict[str, str | bytes] = {"name": req.name, "execution_id": execution_id}
    if req.HasField("version"):
        fields["version"] = req.version.value
    if req.HasField("scheduledStartTimestamp"):
        fields["scheduled_start"] = req.scheduledStartTimestamp.ToJsonString()
    if req.HasField("requestTime"):
        fields["request_time"] = req.requestTime.ToJsonString()

    started = pb.ExecutionStartedEvent(
        name=req.name,
        orchestrationInstance=pb.OrchestrationInstance(
            instanceId=instance_id, executionId=wrappers_pb2.StringValue(value=execution_id)),
        tags=req.tags,
    )
    for name in ("version", "input", "scheduledStartTimestamp", "parentTraceContext"):
        if req.HasField(name):
            getattr(started, name).CopyFrom(getattr(req, name))
    event = pb.HistoryEvent(eventId=-1, executionStarted=started)
    if req.HasField("requestTime"):
        event.timestamp.CopyFrom(req.requestTime)
    else:
        event.timestamp.FromNanoseconds(time.time_ns())

    return NewInstance(
        instance_id=instance_id,
        fields=fields,
        start_event=event.SerializeToString(),
        due_ms=due_ms(req.scheduledStartTimestamp) if req.HasField("scheduledStartTimestamp") else None,
        replaceable=tuple(status_name(s) for s in req.orchestrationIdReusePolicy.replaceableStatus),
    )


_OPTIONAL_TEXT = (("version", "version"), ("execution_id", "executionId"), ("parent_instance_id", "parentInstanceId"))


def orchestration_state(instance_id: str, h: dict[str, bytes], include_payloads: bool) -> pb.OrchestrationState:
    """The OrchestrationState of a stored instance hash."""
    state = pb.OrchestrationState(
        instanceId=instance_id,
        name=h["name"].decode(),
        orchestrationStatus=status_value(h["status"].decode()),
        createdTimestamp=_ts_from_ms(int(h["created_ms"])),
        lastUpdatedTimestamp=_ts_from_ms(int(h["updated_ms"])),
    )
    for name, attr in _OPTIONAL_TEXT:
        if name in h:
            getattr(state, attr).value = h[name].decode()
    started = _start_event(h)
    if include_payloads:
        if started is not None and started.HasField("input"):
            state.input.CopyFrom(started.input)
        if "output" in h:
            state.output.value = h["output"].decode()
        if "custom_status" in h:
            state.customStatus.value = h["custom_status"].decode()
    if "scheduled_start" in h:
        state.scheduledStartTimestamp.CopyFrom(_ts_from_text(h["scheduled_start"]))
    if "completed_ms" in h:
        state.completedTimestamp.CopyFrom(_ts_from_ms(int(h["completed_ms"])))
    if "failure" in h:
        state.failureDetails.ParseFromString(h["failure"])
    if started is not None and started.tags:
        state.tags.update(started.tags)
    return state


def _start_event(h: dict[str, bytes]) -> pb.ExecutionStartedEvent | None:
    raw = h.get("start_event")
    if raw is None:
        return None
    return pb.HistoryEvent.FromString(raw).executionStarted


def _history_event(**kind) -> bytes:
    """A serialized HistoryEvent (eventId -1, timestamp now) of one kind, e.g. ``eventRaised=...``."""
    event = pb.HistoryEvent(eventId=-1, **kind)
    event.timestamp.FromNanoseconds(time.time_ns())
    return event.SerializeToString()


def _text(value: str | None) -> wrappers_pb2.StringValue | None:
    return None if value is None else wrappers_pb2.StringValue(value=value)


def event_raised(name: str, payload: str | None) -> bytes:
    return _history_event(eventRaised=pb.EventRaisedEvent(name=name, input=_text(payload)))


def execution_terminated(output: str | None, recurse: bool) -> bytes:
    return _history_event(executionTerminated=pb.ExecutionTerminatedEvent(input=_text(output), recurse=recurse))


def execution_suspended(reason: str | None) -> bytes:
    return _history_event(executionSuspended=pb.ExecutionSuspendedEvent(input=_text(reason)))


def execution_resumed(reason: str | None) -> bytes:
    return _history_event(executionResumed=pb.ExecutionResumedEvent(input=_text(reason)))


def orchestrator_started() -> bytes:
    """A serialized OrchestratorStarted event stamped now: it opens every episode handed to a worker."""
    event = pb.HistoryEvent(eventId=-1, orchestratorStarted=pb.OrchestratorStartedEvent())
    event.timestamp.FromNanoseconds(time.time_ns())
    return event.SerializeToString()


def orchestrator_work_item(instance_id: str, execution_id: bytes | None, past: list[bytes], new: list[bytes],
                           token: str) -> pb.WorkItem:
    """The WorkItem of a claimed episode: its history, then the new events (OrchestratorStarted first)."""
    request = pb.OrchestratorRequest(instanceId=instance_id)
    if execution_id is not None:
        request.executionId.value = execution_id.decode()
    for raw in past:
        request.pastEvents.add().ParseFromString(raw)
    for raw in new:
        request.newEvents.add().ParseFromString(raw)
    return pb.WorkItem(orchestratorRequest=request, completionToken=token)


_FINAL = (pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED, pb.ORCHESTRATION_STATUS_TERMINATED)


@dataclass
class Episode:
    """What a worker's episode result does: history events, activities to queue, and the end, if any."""

    events: list[bytes] = field(default_factory=list)
    activities: list[tuple[int, bytes]] = field(default_factory=list)  # (task id, serialized ActivityRequest)
    timers: list[tuple[int, bytes]] = field(default_factory=list)  # (fire time ms, serialized TimerFired event)
    status: str | None = None
    output: str | None = None
    failure: bytes | None = None
    next_execution: list[bytes] | None = None  # continue-as-new: ExecutionStarted + carried-over events
    outbox: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # (message id, kind, target, payload)


def episode_result(response: pb.OrchestratorResponse, instance_id: str, execution_id: str,
                   name: str = "") -> Episode:
    """Translate a worker's actions into history events and work.

    Every action of the protocol but entity messages is supported; those (and unknown
    actions) fail the instance
    with a failure saying so, rather than being dropped silently."""
    episode = Episode()
    for action in response.actions:
        kind = action.WhichOneof("orchestratorActionType")
        if kind == "scheduleTask":
            task = action.scheduleTask
            scheduled = pb.TaskScheduledEvent(name=task.name, tags=task.tags)
            request = pb.ActivityRequest(name=task.name, taskId=action.id, tags=task.tags,
                                         orchestrationInstance=pb.OrchestrationInstance(
                                             instanceId=instance_id,
                                             executionId=wrappers_pb2.StringValue(value=execution_id)))
            for name in ("version", "input", "parentTraceContext"):
                if task.HasField(name):
                    getattr(scheduled, name).CopyFrom(getattr(task, name))
                    getattr(request, name).CopyFrom(getattr(task, name))
            episode.events.append(_event(action.id, taskScheduled=scheduled))
            episode.activities.append((action.id, request.SerializeToString()))
        elif kind in ("createSubOrchestration", "sendEvent", "terminateOrchestration"):
            target, event, message = _cross_instance(action, instance_id, execution_id, name)
            if not target or has_control_chars(target) or len(target) > 256:
                failure = pb.TaskFailureDetails(errorType="InvalidArgument", isNonRetriable=True,
                                                errorMessage=f"{kind} names an invalid instance id {target!r}")
                return Episode(events=[_completed(action.id, pb.ORCHESTRATION_STATUS_FAILED, None, failure)],
                               status="FAILED", failure=failure.SerializeToString())
            if event is not None:
                episode.events.append(event)
            episode.outbox.append((f"{instance_id}:{execution_id}:{action.id}", *message))
        elif kind == "createTimer":
            fire_at = action.createTimer.fireAt
            episode.events.append(_event(action.id, timerCreated=pb.TimerCreatedEvent(fireAt=fire_at)))
            fired = pb.HistoryEvent(eventId=-1, timerFired=pb.TimerFiredEvent(fireAt=fire_at, timerId=action.id))
            fired.timestamp.CopyFrom(fire_at)
            episode.timers.append((due_ms(fire_at), fired.SerializeToString()))
        elif kind == "completeOrchestration" and \
                action.completeOrchestration.orchestrationStatus == pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW:
            return Episode(next_execution=[])  # filled by continue_as_new_events with the instance's start event
        elif kind == "completeOrchestration" and action.completeOrchestration.orchestrationStatus in _FINAL:
            done = action.completeOrchestration
            episode.status = status_name(done.orchestrationStatus)
            episode.output = done.result.value if done.HasField("result") else None
            failure = done.failureDetails if done.HasField("failureDetails") else None
            episode.failure = None if failure is None else failure.SerializeToString()
            episode.events.append(_completed(action.id, done.orchestrationStatus, episode.output, failure))
            episode.activities, episode.timers = [], []  # it ended: nothing it scheduled will be awaited
            return episode
        else:
            what = kind
            failure = pb.TaskFailureDetails(
                errorType="NotSupported", isNonRetriable=True,
                errorMessage=f"the orchestration used {what}, which this server does not support yet")
            return Episode(events=[_completed(action.id, pb.ORCHESTRATION_STATUS_FAILED, None, failure)],
                           status="FAILED", failure=failure.SerializeToString())
    return episode


def _event(event_id: int, **kind) -> bytes:
    event = pb.HistoryEvent(eventId=event_id, **kind)
    event.timestamp.FromNanoseconds(time.time_ns())
    return event.SerializeToString()


def activity_result(response: pb.ActivityResponse) -> bytes:
    """The serialized TaskCompleted or TaskFailed event of an activity's result."""
    if response.HasField("failureDetails"):
        return _event(-1, taskFailed=pb.TaskFailedEvent(taskScheduledId=response.taskId,
                                                        failureDetails=response.failureDetails))
    completed = pb.TaskCompletedEvent(taskScheduledId=response.taskId)
    if response.HasField("result"):
        completed.result.CopyFrom(response.result)
    return _event(-1, taskCompleted=completed)


def _completed(event_id: int, status: int, output: str | None, failure: pb.TaskFailureDetails | None) -> bytes:
    event = pb.HistoryEvent(eventId=event_id, executionCompleted=pb.ExecutionCompletedEvent(orchestrationStatus=status))
    event.timestamp.FromNanoseconds(time.time_ns())
    if output is not None:
        event.executionCompleted.result.value = output
    if failure is not None:
        event.executionCompleted.failureDetails.CopyFrom(failure)
    return event.SerializeToString()


def continue_as_new_events(response: pb.OrchestratorResponse, previous_start: bytes,
                           execution_id: str) -> list[bytes]:
    """The next execution's ExecutionStarted event (built from the previous one: same name, parent,
    tags and trace context; the new input and version) followed by the carried-over events."""
    action = next(a.completeOrchestration for a in response.actions if a.HasField("completeOrchestration"))
    event = pb.HistoryEvent.FromString(previous_start)
    started = event.executionStarted
    started.orchestrationInstance.executionId.value = execution_id
    started.ClearField("scheduledStartTimestamp")
    started.ClearField("input")
    if action.HasField("result"):
        started.input.CopyFrom(action.result)
    if action.HasField("newVersion"):
        started.version.CopyFrom(action.newVersion)
    event.timestamp.FromNanoseconds(time.time_ns())
    return [event.SerializeToString(), *(e.SerializeToString() for e in action.carryoverEvents)]


def _cross_instance(action: pb.OrchestratorAction, instance_id: str, execution_id: str,
                    name: str) -> tuple[str, bytes | None, tuple[str, str, bytes]]:
    """(target id, history event for the sender, (kind, target, payload) of the outbox message)."""
    kind = action.WhichOneof("orchestratorActionType")
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
        for f in ("version", "input", "parentTraceContext"):
            if sub.HasField(f):
                getattr(created, f).CopyFrom(getattr(sub, f))
                getattr(started, f).CopyFrom(getattr(sub, f))
        return sub.instanceId, _event(action.id, subOrchestrationInstanceCreated=created), \
            ("create", sub.instanceId, _event(-1, executionStarted=started))
    if kind == "sendEvent":
        send = action.sendEvent
        sent = pb.EventSentEvent(instanceId=send.instance.instanceId, name=send.name)
        raised = pb.EventRaisedEvent(name=send.name)
        if send.HasField("data"):
            sent.input.CopyFrom(send.data)
            raised.input.CopyFrom(send.data)
        target = send.instance.instanceId
        return target, _event(action.id, eventSent=sent), ("event", target, _event(-1, eventRaised=raised))
    stop = action.terminateOrchestration
    terminated = pb.ExecutionTerminatedEvent(recurse=stop.recurse)
    if stop.HasField("reason"):
        terminated.input.CopyFrom(stop.reason)
    return stop.instanceId, None, ("terminate", stop.instanceId, _event(-1, executionTerminated=terminated))


def parent_notification(h: dict[str, bytes], episode: Episode) -> tuple[str, str, str, bytes] | None:
    """The outbox message telling a sub-orchestration's parent how it ended, if it has a parent."""
    parent = h.get("parent_instance_id")
    if parent is None or episode.status is None:
        return None
    task_id = int(h.get("parent_task_id", b"-1"))
    if episode.status == "COMPLETED":
        done = pb.SubOrchestrationInstanceCompletedEvent(taskScheduledId=task_id)
        if episode.output is not None:
            done.result.value = episode.output
        event = _event(-1, subOrchestrationInstanceCompleted=done)
    else:
        failure = pb.TaskFailureDetails.FromString(episode.failure) if episode.failure else pb.TaskFailureDetails(
            errorType="Terminated" if episode.status == "TERMINATED" else "Failed",
            errorMessage=f"the sub-orchestration ended {episode.status}")
        event = sub_orchestration_failed(task_id, failure)
    child_execution = h.get("execution_id", b"").decode()
    return (f"{child_execution}:done", "event", parent.decode(), event)


def sub_orchestration_failed(task_id: int, failure: pb.TaskFailureDetails) -> bytes:
    """The serialized SubOrchestrationInstanceFailed event that fails a parent's sub-orchestration task."""
    return _event(-1, subOrchestrationInstanceFailed=pb.SubOrchestrationInstanceFailedEvent(
        taskScheduledId=task_id, failureDetails=failure))


def history_limit_failure(limit: int, would_be: int) -> Episode:
    """The episode that fails an orchestration whose history would exceed the configured limit."""
    failure = pb.TaskFailureDetails(
        errorType="HistoryLimitExceeded", isNonRetriable=True,
        errorMessage=f"the orchestration's history would grow to {would_be} events; the limit is {limit} "
                     "(continue-as-new keeps long-running orchestrations small)")
    return Episode(events=[_completed(-1, pb.ORCHESTRATION_STATUS_FAILED, None, failure)], status="FAILED",
                   failure=failure.SerializeToString())
