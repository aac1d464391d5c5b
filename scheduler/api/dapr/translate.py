"""Dapr's messages to ours and back (Dapr's fork of the contract: protos/dapr/orchestrator_service.proto).

Most messages of the two contracts are the same on the wire, so they are translated by their bytes
(serialized in one contract, parsed in the other). The fields where the two contracts give one number
two meanings are moved by hand before that:

- ``ScheduleTaskAction.taskExecutionId`` (Dapr 5; ours: parentTraceContext) travels in our messages as
  the tag :data:`TASK_EXECUTION_ID` of the action, hence of its TaskScheduled event and its
  ActivityRequest (both copy the action's tags); on the way out it is Dapr's ``taskExecutionId`` of the
  ActivityRequest and the TaskScheduled event, and of the TaskCompleted/TaskFailed event that answers it.
- ``router`` (OrchestratorAction 9, ScheduleTaskAction 4, CreateSubOrchestrationAction 5, ...): app
  routing needs Dapr's placement, which a standalone service has not; it is dropped (README).
- ``OrchestratorResponse.version`` (Dapr 6): a worker's orchestration version and the patches it met are
  kept as a *version record* in the history (see :func:`version_record`) and handed back in the
  ``OrchestratorStarted`` events (see :func:`history_out`).
- ``PurgeInstancesRequest.force`` (Dapr 4; ours: instanceBatch) is read by the servicer.

Fields only Dapr knows, at numbers ours leaves free (a timer's ``name``, ``executionStalled`` events),
pass through our engine as unknown fields of the stored bytes.
"""
from __future__ import annotations

from collections.abc import Iterable

from ..._proto import orchestrator_service_pb2 as pb
from ..._proto.dapr import orchestrator_service_pb2 as dpb

TASK_EXECUTION_ID = "dapr.taskExecutionId"  # the tag that carries a task's taskExecutionId in our messages


def to_ours(message, ours_class):
    """A Dapr message as our message of the same wire form (fields ours has not stay unknown fields)."""
    return ours_class.FromString(message.SerializeToString())


def to_dapr(message, dapr_class):
    return dapr_class.FromString(message.SerializeToString())


# -- a worker's episode result ---------------------------------------------------------------------

def orchestrator_response(response: dpb.OrchestratorResponse) -> tuple[pb.OrchestratorResponse, bool]:
    """(our response, whether the worker said the orchestration's version is not available here)."""
    response = dpb.OrchestratorResponse.FromString(response.SerializeToString())  # a copy to change
    stalled = False
    kept = []
    for action in response.actions:
        kind = action.WhichOneof("orchestratorActionType")
        if kind == "orchestratorVersionNotAvailable":
            stalled = True
            continue
        action.ClearField("router")
        if kind == "scheduleTask":
            action.scheduleTask.ClearField("router")
        elif kind == "createSubOrchestration":
            action.createSubOrchestration.ClearField("router")
        kept.append(action)
    task_ids = {}
    for action in kept:
        if action.WhichOneof("orchestratorActionType") == "scheduleTask" and action.scheduleTask.taskExecutionId:
            task_ids[action.id] = action.scheduleTask.taskExecutionId
            action.scheduleTask.ClearField("taskExecutionId")
    del response.actions[:]
    response.actions.extend([] if stalled else kept)
    response.ClearField("version")
    ours = to_ours(response, pb.OrchestratorResponse)
    for action in ours.actions:
        if action.id in task_ids and action.WhichOneof("orchestratorActionType") == "scheduleTask":
            action.scheduleTask.tags[TASK_EXECUTION_ID] = task_ids[action.id]
    return ours, stalled


def version_record(response: dpb.OrchestratorResponse) -> bytes | None:
    """The history event that keeps the worker's orchestration version and patches, or None: an
    OrchestratorStarted event without a timestamp (Dapr's bytes; to our engine an OrchestratorStarted
    with an unknown field). :func:`history_out` folds it into the episode's own OrchestratorStarted."""
    if not response.HasField("version"):
        return None
    return dpb.HistoryEvent(eventId=-1, orchestratorStarted=dpb.OrchestratorStartedEvent(
        version=response.version)).SerializeToString()


def stalled_event(description: str) -> bytes:
    """The executionStalled event (Dapr's bytes) of an orchestration whose version no worker has."""
    event = dpb.HistoryEvent(eventId=-1, executionStalled=dpb.ExecutionStalledEvent(
        reason=dpb.VERSION_NOT_AVAILABLE, description=description))
    event.timestamp.GetCurrentTime()
    return event.SerializeToString()


# -- work items and histories ----------------------------------------------------------------------

def history_out(events: Iterable[pb.HistoryEvent]) -> list[dpb.HistoryEvent]:
    """Our history events as Dapr's: taskExecutionId where a task has one; version records folded into
    the OrchestratorStarted event before them (every OrchestratorStarted event after the first record
    carries the version: the SDK reads the version name and the patches from any of them); our own
    events that Dapr has no words for (ExecutionRewound) left out."""
    out: list[dpb.HistoryEvent] = []
    task_ids: dict[int, str] = {}
    version: dpb.OrchestrationVersion | None = None
    last_started: dpb.HistoryEvent | None = None
    for event in events:
        which = event.WhichOneof("eventType")
        if which == "executionRewound":
            continue
        teid = None
        if which == "taskScheduled":
            teid = event.taskScheduled.tags.get(TASK_EXECUTION_ID)
            event = _copy(event)
            event.taskScheduled.ClearField("tags")
            if teid:
                task_ids[event.eventId] = teid
        elif which == "subOrchestrationInstanceCreated":
            event = _copy(event)
            event.subOrchestrationInstanceCreated.ClearField("tags")
        dapr = to_dapr(event, dpb.HistoryEvent)
        if teid:
            dapr.taskScheduled.taskExecutionId = teid
        elif which in ("taskCompleted", "taskFailed"):
            task = getattr(dapr, which)
            if task.taskScheduledId in task_ids:
                task.taskExecutionId = task_ids[task.taskScheduledId]
        if which == "orchestratorStarted":
            if not dapr.HasField("timestamp"):  # a version record
                version = dapr.orchestratorStarted.version
                if last_started is not None:
                    last_started.orchestratorStarted.version.CopyFrom(version)
                continue
            if version is not None:
                dapr.orchestratorStarted.version.CopyFrom(version)
            last_started = dapr
        out.append(dapr)
    return out


def _copy(event: pb.HistoryEvent) -> pb.HistoryEvent:
    copy = pb.HistoryEvent()
    copy.CopyFrom(event)
    return copy


def work_item(item: pb.WorkItem) -> dpb.WorkItem:
    """Our work item as Dapr's."""
    which = item.WhichOneof("request")
    if which == "orchestratorRequest":
        request = item.orchestratorRequest
        dapr = dpb.WorkItem(completionToken=item.completionToken)
        out = dapr.orchestratorRequest
        out.instanceId = request.instanceId
        if request.HasField("executionId"):
            out.executionId.CopyFrom(request.executionId)
        past = history_out(request.pastEvents)
        new = history_out([*request.pastEvents, *request.newEvents])[len(past):]
        out.pastEvents.extend(past)
        out.newEvents.extend(new)
        return dapr
    if which == "activityRequest":
        request = pb.ActivityRequest()
        request.CopyFrom(item.activityRequest)
        teid = request.tags.get(TASK_EXECUTION_ID, "")
        request.ClearField("tags")
        dapr = to_dapr(pb.WorkItem(activityRequest=request, completionToken=item.completionToken), dpb.WorkItem)
        dapr.activityRequest.taskExecutionId = teid
        return dapr
    return to_dapr(item, dpb.WorkItem)
