"""What the dashboard's JSON says: instances, history timelines, entities and schedules, from the
replies of the service's calls. Payloads are cut to a preview (the instance page fetches one whole
on request), so every answer stays small whatever the instances hold."""
from __future__ import annotations

import json

from ..._proto import orchestrator_service_pb2 as pb
from ...engine.events import status_name

PREVIEW_CHARS = 2000  # an instance's input, output, custom status, failure
EVENT_PREVIEW_CHARS = 200  # a payload in a history event
SCHEDULE_ENTITY = "schedule"  # the entity name of durabletask.scheduled's schedules


def ms(ts) -> int | None:
    """Epoch ms of a Timestamp, None when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def preview(text: str | None, limit: int) -> dict | None:
    if text is None:
        return None
    return {"text": text[:limit], "size": len(text), "truncated": len(text) > limit}


def _optional(message, field: str) -> str | None:
    return getattr(message, field).value if message.HasField(field) else None


def failure_text(failure: pb.TaskFailureDetails) -> str:
    lines = [f"{failure.errorType}: {failure.errorMessage}"]
    if failure.HasField("stackTrace"):
        lines.append(failure.stackTrace.value)
    inner = failure.innerFailure if failure.HasField("innerFailure") else None
    while inner is not None:
        lines.append(f"caused by {inner.errorType}: {inner.errorMessage}")
        inner = inner.innerFailure if inner.HasField("innerFailure") else None
    return "\n".join(lines)


def instance_row(state: pb.OrchestrationState) -> dict:
    """One row of the instance list."""
    return {
        "id": state.instanceId, "name": state.name, "status": status_name(state.orchestrationStatus),
        "createdMs": ms(state.createdTimestamp), "updatedMs": ms(state.lastUpdatedTimestamp),
        "completedMs": ms(state.completedTimestamp) if state.HasField("completedTimestamp") else None,
        "scheduledStartMs": ms(state.scheduledStartTimestamp) if state.HasField("scheduledStartTimestamp") else None,
    }


def payload_of(state: pb.OrchestrationState, which: str) -> str | None:
    """The whole text of one of an instance's payloads: input, output, customStatus or failure."""
    if which == "failure":
        return failure_text(state.failureDetails) if state.HasField("failureDetails") else None
    return _optional(state, which)


def instance_detail(state: pb.OrchestrationState) -> dict:
    detail = instance_row(state)
    detail.update({
        "version": _optional(state, "version"), "executionId": _optional(state, "executionId"),
        "parentInstanceId": _optional(state, "parentInstanceId"), "tags": dict(state.tags),
    })
    for which in ("input", "output", "customStatus", "failure"):
        detail[which] = preview(payload_of(state, which), PREVIEW_CHARS)
    return detail


_ENDS = {"taskCompleted": "completed", "taskFailed": "failed", "subOrchestrationInstanceCompleted": "completed",
         "subOrchestrationInstanceFailed": "failed"}
_POINTS = {"executionStarted", "executionCompleted", "executionTerminated", "executionSuspended", "executionResumed",
           "executionRewound", "continueAsNew", "eventRaised", "eventSent", "entityOperationSignaled",
           "entityLockRequested", "entityLockGranted", "entityUnlockSent"}


def timeline(events: list[pb.HistoryEvent]) -> dict:
    """The history as bars from scheduled to completed (activities, timers, sub-orchestrations, entity
    calls) and points (events, the start and the end), and the children it created."""
    bars: list[dict] = []
    by_id: dict[int, dict] = {}  # eventId of what was scheduled -> its bar
    by_request: dict[str, dict] = {}  # entity calls, by request id
    points: list[dict] = []
    children: list[str] = []
    first_run = None
    for event in events:
        kind = event.WhichOneof("eventType")
        at = ms(event.timestamp)
        body = getattr(event, kind) if kind else None
        if kind == "orchestratorStarted" and first_run is None:
            first_run = at
        elif kind == "taskScheduled":
            by_id[event.eventId] = _bar(bars, "activity", body.name, at, _optional(body, "input"))
        elif kind == "subOrchestrationInstanceCreated":
            by_id[event.eventId] = _bar(bars, "orchestration", body.name, at, _optional(body, "input"),
                                        instance=body.instanceId)
            children.append(body.instanceId)
        elif kind == "timerCreated":
            by_id[event.eventId] = _bar(bars, "timer", "timer", at, None, due=ms(body.fireAt))
        elif kind == "entityOperationCalled":
            target = _optional(body, "targetInstanceId") or ""
            by_request[body.requestId] = _bar(bars, "entity", f"{body.operation} {target}".strip(), at,
                                              _optional(body, "input"))
        elif kind in _ENDS:
            _end(by_id.get(body.taskScheduledId), at, _ENDS[kind], _result(kind, body))
        elif kind == "timerFired":
            _end(by_id.get(body.timerId), at, "fired", None)
        elif kind in ("entityOperationCompleted", "entityOperationFailed"):
            _end(by_request.get(body.requestId), at, "completed" if kind == "entityOperationCompleted" else "failed",
                 _optional(body, "output") if kind == "entityOperationCompleted" else failure_text(body.failureDetails))
        elif kind in _POINTS:
            points.append({"kind": kind, "name": getattr(body, "name", "") or getattr(body, "operation", ""),
                           "atMs": at, "detail": _point_detail(kind, body)})
    return {"bars": bars, "points": points, "children": children, "firstRunMs": first_run}


def _bar(bars: list[dict], kind: str, name: str, at: int | None, payload: str | None, **extra) -> dict:
    bar = {"kind": kind, "name": name, "scheduledMs": at, "endMs": None, "outcome": "pending",
           "input": preview(payload, EVENT_PREVIEW_CHARS), "result": None, **extra}
    bars.append(bar)
    return bar


def _end(bar: dict | None, at: int | None, outcome: str, result: str | None) -> None:
    if bar is not None:
        bar.update(endMs=at, outcome=outcome, result=preview(result, EVENT_PREVIEW_CHARS))


def _result(kind: str, body) -> str | None:
    if kind.endswith("Failed"):
        return failure_text(body.failureDetails)
    return _optional(body, "result")


def _point_detail(kind: str, body) -> dict | None:
    if kind == "executionCompleted":
        return {"status": status_name(body.orchestrationStatus),
                "result": preview(_optional(body, "result"), EVENT_PREVIEW_CHARS)}
    if kind in ("eventRaised", "eventSent"):
        return {"input": preview(_optional(body, "input"), EVENT_PREVIEW_CHARS),
                **({"instance": body.instanceId} if kind == "eventSent" else {})}
    if kind == "entityOperationSignaled":
        return {"entity": _optional(body, "targetInstanceId")}
    return None


def entity_row(entity: pb.EntityMetadata) -> dict:
    return {"id": entity.instanceId, "lastModifiedMs": ms(entity.lastModifiedTime),
            "backlog": entity.backlogQueueSize, "lockedBy": _optional(entity, "lockedBy"),
            "state": preview(_optional(entity, "serializedState"), EVENT_PREVIEW_CHARS)}


def schedule_row(entity: pb.EntityMetadata) -> dict:
    """A schedule of durabletask.scheduled, from its entity's state (the .NET-shaped JSON its SDK
    writes, or the older snake_case one)."""
    row = {"id": entity.instanceId.split("@", 2)[-1], "entityId": entity.instanceId,
           "lastModifiedMs": ms(entity.lastModifiedTime), "status": None, "interval": None,
           "orchestration": None, "nextRun": None, "lastRun": None}
    try:
        state = json.loads(_optional(entity, "serializedState") or "null")
    except ValueError:
        return row
    if isinstance(state, str):  # a converter may have written the JSON as a string
        try:
            state = json.loads(state)
        except ValueError:
            return row
    if not isinstance(state, dict):
        return row
    config = _get(state, "ScheduleConfiguration", "schedule_configuration") or {}
    status = _get(state, "Status", "status")
    row.update(status={0: "Uninitialized", 1: "Active", 2: "Paused"}.get(status, status),
               nextRun=_get(state, "NextRunAt", "next_run_at"), lastRun=_get(state, "LastRunAt", "last_run_at"))
    if isinstance(config, dict):
        seconds = config.get("interval_seconds")
        row.update(interval=_get(config, "Interval", "interval") or (f"{seconds} s" if seconds else None),
                   orchestration=_get(config, "OrchestrationName", "orchestration_name"))
    return row


def _get(data: dict, *names: str):
    for name in names:
        if name in data:
            return data[name]
    return None
