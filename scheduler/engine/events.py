"""The protocol messages the engine writes and reads: history events, work items, status numbers.

History events are kept and passed around serialized (bytes), as the store keeps them.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from google.protobuf import wrappers_pb2

from .._proto import orchestrator_service_pb2 as pb
from ..protocol import STATUS_PREFIX


def status_name(value: int) -> str:
    """``pb.ORCHESTRATION_STATUS_PENDING`` -> ``"PENDING"``; ValueError for an unknown number."""
    return pb.OrchestrationStatus.Name(value)[len(STATUS_PREFIX):]


def status_value(name: str) -> int:
    return pb.OrchestrationStatus.Value(STATUS_PREFIX + name)


def history_event(event_id: int = -1, **kind) -> bytes:
    """A serialized HistoryEvent stamped now, of one kind (e.g. ``eventRaised=...``)."""
    event = pb.HistoryEvent(eventId=event_id, **kind)
    event.timestamp.FromNanoseconds(time.time_ns())
    return event.SerializeToString()


def text(value: str | None) -> wrappers_pb2.StringValue | None:
    return None if value is None else wrappers_pb2.StringValue(value=value)


TASK_FIELDS = ("version", "input", "parentTraceContext")  # optional fields a task carries from action to event


def copy_set(source, *targets, fields: tuple[str, ...] = TASK_FIELDS) -> None:
    """Copy each of ``fields`` that is set in the message ``source`` to the ``targets`` (same field names)."""
    for f in fields:
        if source.HasField(f):
            for target in targets:
                getattr(target, f).CopyFrom(getattr(source, f))


def event_raised(name: str, payload: str | None) -> bytes:
    return history_event(eventRaised=pb.EventRaisedEvent(name=name, input=text(payload)))


def execution_terminated(output: str | None, recurse: bool) -> bytes:
    return history_event(executionTerminated=pb.ExecutionTerminatedEvent(input=text(output), recurse=recurse))


def execution_suspended(reason: str | None) -> bytes:
    return history_event(executionSuspended=pb.ExecutionSuspendedEvent(input=text(reason)))


def execution_resumed(reason: str | None) -> bytes:
    return history_event(executionResumed=pb.ExecutionResumedEvent(input=text(reason)))


def execution_rewound(reason: str | None, parent_execution_id: str | None = None) -> bytes:
    return history_event(executionRewound=pb.ExecutionRewoundEvent(reason=text(reason),
                                                                    parentExecutionId=text(parent_execution_id)))


def orchestrator_started() -> bytes:
    """The OrchestratorStarted event stamped now that opens every episode handed to a worker."""
    return history_event(orchestratorStarted=pb.OrchestratorStartedEvent())


def execution_completed(event_id: int, status: int, output: str | None,
                        failure: pb.TaskFailureDetails | None) -> bytes:
    done = pb.ExecutionCompletedEvent(orchestrationStatus=status, result=text(output))
    if failure is not None:
        done.failureDetails.CopyFrom(failure)
    return history_event(event_id, executionCompleted=done)


def activity_result(response: pb.ActivityResponse) -> bytes:
    """The TaskCompleted or TaskFailed event of an activity's result."""
    if response.HasField("failureDetails"):
        return history_event(taskFailed=pb.TaskFailedEvent(taskScheduledId=response.taskId,
                                                           failureDetails=response.failureDetails))
    completed = pb.TaskCompletedEvent(taskScheduledId=response.taskId)
    if response.HasField("result"):
        completed.result.CopyFrom(response.result)
    return history_event(taskCompleted=completed)


def sub_orchestration_failed(task_id: int, failure: pb.TaskFailureDetails) -> bytes:
    """The SubOrchestrationInstanceFailed event that fails a parent's sub-orchestration task."""
    return history_event(subOrchestrationInstanceFailed=pb.SubOrchestrationInstanceFailedEvent(
        taskScheduledId=task_id, failureDetails=failure))


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


def activity_work_item(payload: bytes, token: str) -> pb.WorkItem:
    return pb.WorkItem(activityRequest=pb.ActivityRequest.FromString(payload), completionToken=token)


def entity_work_item(entity_id: str, state: bytes | None, operations: list[bytes], token: str) -> pb.WorkItem:
    """The WorkItem of an entity's batch, in the history-event form (``entityRequestV2``) that the SDKs'
    workers take: the state, then the operations (EntityOperationSignaled/Called events) in order."""
    request = pb.EntityRequest(instanceId=entity_id)
    if state is not None:
        request.entityState.value = state.decode()
    for raw in operations:
        request.operationRequests.add().ParseFromString(raw)
    return pb.WorkItem(entityRequestV2=request, completionToken=token)


def entity_result(request_id: str, result: pb.OperationResult | None,
                  failure: pb.TaskFailureDetails | None = None) -> bytes:
    """The EntityOperationCompleted or EntityOperationFailed event that answers a call: the worker's
    ``result``, or ``failure`` when the operation could not run."""
    if failure is None and result is not None and result.HasField("failure"):
        failure = result.failure.failureDetails
    if failure is not None:
        return history_event(entityOperationFailed=pb.EntityOperationFailedEvent(requestId=request_id,
                                                                                 failureDetails=failure))
    completed = pb.EntityOperationCompletedEvent(requestId=request_id)
    if result is not None and result.success.HasField("result"):
        completed.output.CopyFrom(result.success.result)
    return history_event(entityOperationCompleted=completed)
# The events that start a task of an orchestration, and (event, field naming the task) of those that end it.
_TASK_ENDS = {"taskScheduled": (("taskCompleted", "taskScheduledId"), ("taskFailed", "taskScheduledId")),
              "timerCreated": (("timerFired", "timerId"),),
              "subOrchestrationInstanceCreated": (("subOrchestrationInstanceCompleted", "taskScheduledId"),
                                                  ("subOrchestrationInstanceFailed", "taskScheduledId"))}


def open_tasks(history: Iterable[pb.HistoryEvent], kind: str) -> list[pb.HistoryEvent]:
    """The events of ``kind`` ("taskScheduled", "timerCreated" or "subOrchestrationInstanceCreated") in
    ``history`` whose task the history does not record ending, in order (the task id is the event id)."""
    ends = dict(_TASK_ENDS[kind])
    started: dict[int, pb.HistoryEvent] = {}
    ended: set[int] = set()
    for event in history:
        which = event.WhichOneof("eventType")
        if which == kind:
            started[event.eventId] = event
        elif which in ends:
            ended.add(getattr(getattr(event, which), ends[which]))
    return [event for task_id, event in started.items() if task_id not in ended]
