"""The spans of orchestrations (see scheduler/tracing.py), and the trace context handed to workers.

Every function here is called only when tracing is on and the instance has an orchestration span
(``tracing.ref_of(fields)`` is not None); each emits the spans whose end the caller just saw:

- the orchestration's span, ``orchestration:<name>``, from the instance's creation to its end
  (:func:`orchestration_ended`), a child of the caller's span when the creation named one;
- its activities, ``activity:<name>`` (scheduled -> completed or failed) and timers,
  ``timer:<name>`` (created -> fired), when the episode that receives their end is handed to a
  worker (:func:`handed_out`); a sub-orchestration is an orchestration whose span is a child of its
  parent's. The service's spans never hang below a span of a worker (which may not trace);
- the promotion of a delayed start, ``promotion:<name>`` (due -> promoted, with its lag);
- an orchestration's calls to entities, ``entity:<entity>:<operation>`` (called -> its batch's result
  applied), children of the caller's span (signals carry no trace context in this contract).

What a worker gets: the ExecutionStarted event of its work item names this orchestration's span as
its parent (the SDK's own orchestration span becomes its child), the work item's
``orchestrationTraceContext`` gives the SDK a span id and start time that stay the same on every
episode, and an ActivityRequest names the activity's span (the SDK's activity span becomes its
child).
"""
from __future__ import annotations

import time

from .. import tracing
from .._proto import orchestrator_service_pb2 as pb
from ..tracing import SpanRef, new_span_id

ATTR_TYPE = "durabletask.type"
ATTR_NAME = "durabletask.task.name"
ATTR_INSTANCE = "durabletask.task.instance_id"
ATTR_EXECUTION = "durabletask.task.execution_id"
ATTR_STATUS = "durabletask.task.status"
ATTR_TASK_ID = "durabletask.task.task_id"


def trace_context(ref: SpanRef, span_id: int | None = None) -> pb.TraceContext:
    """The TraceContext naming ``ref`` (or its child ``span_id``) as the parent."""
    span = ref.span_id if span_id is None else span_id
    return pb.TraceContext(traceParent=ref.traceparent(span), spanID=f"{span:016x}")


def task_span(ref: SpanRef, kind: str, execution_id: str, task_id: int) -> int:
    """The span id of task ``task_id`` (an activity or a timer) of an execution (task ids start again after a
    continue-as-new)."""
    return ref.child(kind, f"{execution_id}/{task_id}")


def activity_context(ref: SpanRef, execution_id: str, task_id: int) -> pb.TraceContext:
    """What an ActivityRequest carries: the activity's span, so the worker's span is its child."""
    return trace_context(ref, task_span(ref, "activity", execution_id, task_id))


def _ms(fields: dict[str, bytes], name: str) -> int | None:
    raw = fields.get(name)
    return None if raw is None else int(raw)


def handed_out(request: pb.OrchestratorRequest, ref: SpanRef, fields: dict[str, bytes]) -> None:
    """Give a worker's episode the orchestration's trace context, and emit the spans of the tasks whose
    end the episode brings."""
    tracer = tracing.active
    started_ns = (_ms(fields, "created_ms") or int(time.time() * 1000)) * 1_000_000
    # the worker's own span of this execution (a worker that traces emits one per execution: a continue-as-new
    # ends one)
    execution_id = fields.get("execution_id", b"").decode()
    request.orchestrationTraceContext.spanID.value = f"{ref.child('worker', execution_id):016x}"
    request.orchestrationTraceContext.spanStartTime.FromNanoseconds(started_ns)
    starts: dict[tuple[str, int], pb.HistoryEvent] = {}
    name = fields.get("name", b"").decode()
    for event in request.pastEvents:
        kind = event.WhichOneof("eventType")
        if kind == "executionStarted":
            event.executionStarted.parentTraceContext.CopyFrom(trace_context(ref))
        elif kind in ("taskScheduled", "timerCreated"):
            starts[(kind, event.eventId)] = event
    for event in request.newEvents:
        kind = event.WhichOneof("eventType")
        if kind == "executionStarted":
            event.executionStarted.parentTraceContext.CopyFrom(trace_context(ref))
        elif kind in ("taskCompleted", "taskFailed"):
            task_id = getattr(event, kind).taskScheduledId
            scheduled = starts.get(("taskScheduled", task_id))
            if scheduled is None:
                continue
            error = getattr(event, kind).failureDetails.errorMessage if kind == "taskFailed" else None
            tracer.emit(f"activity:{scheduled.taskScheduled.name}", ref.trace_id,
                        task_span(ref, "activity", execution_id, task_id), ref.span_id,
                        scheduled.timestamp.ToNanoseconds(), event.timestamp.ToNanoseconds(),
                        {ATTR_TYPE: "activity", ATTR_NAME: scheduled.taskScheduled.name,
                         ATTR_INSTANCE: request.instanceId, ATTR_TASK_ID: task_id,
                         ATTR_STATUS: "Failed" if error is not None else "Completed"},
                        kind="CLIENT", error=error)
        elif kind == "timerFired":
            timer_id = event.timerFired.timerId
            created = starts.get(("timerCreated", timer_id))
            if created is None:
                continue
            tracer.emit(f"timer:{name}", ref.trace_id, task_span(ref, "timer", execution_id, timer_id), ref.span_id,
                        created.timestamp.ToNanoseconds(), event.timerFired.fireAt.ToNanoseconds(),
                        {ATTR_TYPE: "timer", ATTR_NAME: name, ATTR_INSTANCE: request.instanceId,
                         ATTR_TASK_ID: timer_id, "durabletask.fire_at": event.timerFired.fireAt.ToJsonString()})


def orchestration_ended(ref: SpanRef, instance_id: str, fields: dict[str, bytes], status: str,
                        failure: bytes | None = None) -> None:
    """Emit the orchestration's span: it ended (completed, failed or terminated) now."""
    name = fields.get("name", b"").decode()
    created_ms = _ms(fields, "created_ms") or int(time.time() * 1000)
    error = None
    if status == "FAILED":
        error = pb.TaskFailureDetails.FromString(failure).errorMessage if failure else "failed"
    tracing.active.emit(f"orchestration:{name}", ref.trace_id, ref.span_id, ref.parent_id, created_ms * 1_000_000,
                        None, {ATTR_TYPE: "orchestration", ATTR_NAME: name, ATTR_INSTANCE: instance_id,
                               ATTR_EXECUTION: fields.get("execution_id", b"").decode(), ATTR_STATUS: status},
                        kind="SERVER", error=error)


def promoted(ref: SpanRef, instance_id: str, name: str, due_ms: int, now_ms: int) -> None:
    """Emit the span of a delayed start's promotion: from its due time to when the promoter moved it."""
    tracing.active.emit(f"promotion:{name}", ref.trace_id, new_span_id(), ref.span_id, due_ms * 1_000_000,
                        max(now_ms, due_ms) * 1_000_000,
                        {ATTR_TYPE: "promotion", ATTR_NAME: name, ATTR_INSTANCE: instance_id,
                         "dt.promotion.lag_ms": now_ms - due_ms})


def entity_call(ref: SpanRef, entity_id: str, caller: str, event: pb.HistoryEvent, failed: bool) -> None:
    """Emit the span of an orchestration's call to an entity, from the call to its batch's result: a child of
    the caller's orchestration span."""
    called = event.entityOperationCalled
    entity = entity_id[1:].partition("@")[0]
    tracing.active.emit(f"entity:{entity}:{called.operation}", ref.trace_id, new_span_id(), ref.span_id,
                        event.timestamp.ToNanoseconds() if event.HasField("timestamp") else time.time_ns(), None,
                        {ATTR_TYPE: "entity", ATTR_NAME: f"{entity}:{called.operation}", ATTR_INSTANCE: entity_id,
                         "durabletask.entity.caller": caller, "durabletask.entity.request_id": called.requestId,
                         ATTR_STATUS: "Failed" if failed else "Completed"},
                        kind="CLIENT", error="failed" if failed else None)
