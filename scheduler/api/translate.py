"""Translation between the protocol's requests and replies and what the engine and store take.

The instance hash holds scalar fields as plain strings so that ``HGETALL`` is readable:
``name``, ``version``, ``status`` (``PENDING``, ``RUNNING``, ...), ``output``,
``custom_status``, ``execution_id``, ``parent_instance_id``, ``created_ms``/``updated_ms``/
``completed_ms`` (epoch ms; ``updated_ms`` is absent until the first change, the creation time then), ``scheduled_start`` and ``request_time`` (RFC 3339, exactly as
given), ``failure`` (serialized TaskFailureDetails), ``start`` (where the start event is) and,
once rewound, ``rewinds`` (how many times) and ``rewinding`` (until the worker has rewound it).
The input and the tags live only in the ExecutionStarted event (see
:func:`scheduler.engine.orchestrations.new_instance`).
"""
from __future__ import annotations

from .._proto import orchestrator_service_pb2 as pb
from ..engine.events import status_name, status_value
from ..engine.orchestrations import instance_record
from ..protocol import new_id, ts_from_text
from ..store import NewInstance


def new_instance(req: pb.CreateInstanceRequest, instance_id: str) -> NewInstance:
    """The store record of a validated CreateInstanceRequest. Its start event is built in place (an
    ExecutionStartedEvent built apart would be copied into it)."""
    execution_id = req.executionId.value if req.HasField("executionId") and req.executionId.value else new_id()
    event = pb.HistoryEvent(eventId=-1)
    started = event.executionStarted
    started.name = req.name
    started.orchestrationInstance.instanceId = instance_id
    started.orchestrationInstance.executionId.value = execution_id
    if req.tags:
        started.tags.update(req.tags)
    for name in ("version", "input", "scheduledStartTimestamp", "parentTraceContext"):
        if req.HasField(name):
            getattr(started, name).CopyFrom(getattr(req, name))
    has_request_time = req.HasField("requestTime")
    replaceable = tuple(status_name(s) for s in req.orchestrationIdReusePolicy.replaceableStatus) \
        if req.HasField("orchestrationIdReusePolicy") else ()
    return instance_record(event, at=req.requestTime if has_request_time else None,
                           request_time=req.requestTime.ToJsonString() if has_request_time else None,
                           replaceable=replaceable)


_OPTIONAL_TEXT = (("version", "version"), ("execution_id", "executionId"), ("parent_instance_id", "parentInstanceId"))
_STATUS_VALUES = {name.encode(): status_value(name) for name in map(status_name, pb.OrchestrationStatus.values())}


def orchestration_state(instance_id: str, h: dict[str, bytes], include_payloads: bool) -> pb.OrchestrationState:
    """The OrchestrationState of a stored instance hash."""
    state = pb.OrchestrationState()
    fill_state(state, instance_id, h, include_payloads)
    return state


def instance_response(instance_id: str, h: dict[str, bytes] | None, include_payloads: bool) -> pb.GetInstanceResponse:
    """The GetInstanceResponse of a stored instance hash (None: no such instance); the state is built in
    place (a state built apart would be copied into the response)."""
    if h is None:
        return pb.GetInstanceResponse(exists=False)
    response = pb.GetInstanceResponse(exists=True)
    fill_state(response.orchestrationState, instance_id, h, include_payloads)
    return response


def fill_state(state: pb.OrchestrationState, instance_id: str, h: dict[str, bytes], include_payloads: bool) -> None:
    """Set the fields of an empty OrchestrationState from a stored instance hash. The start event is
    parsed for its input and tags, and nothing else of it is read."""
    state.instanceId = instance_id
    state.name = h["name"].decode()
    status = _STATUS_VALUES.get(h["status"])
    state.orchestrationStatus = status_value(h["status"].decode()) if status is None else status
    _set_ms(state.createdTimestamp, h["created_ms"])
    _set_ms(state.lastUpdatedTimestamp, h.get("updated_ms", h["created_ms"]))
    for name, attr in _OPTIONAL_TEXT:
        value = h.get(name)
        if value is not None:
            getattr(state, attr).value = value.decode()
    raw_start = h.get("start_event")
    started = None if raw_start is None else pb.HistoryEvent.FromString(raw_start).executionStarted
    if include_payloads:
        if started is not None and started.HasField("input"):
            state.input.CopyFrom(started.input)
        if "output" in h:
            state.output.value = h["output"].decode()
        if "custom_status" in h:
            state.customStatus.value = h["custom_status"].decode()
    if "scheduled_start" in h:
        state.scheduledStartTimestamp.CopyFrom(ts_from_text(h["scheduled_start"]))
    if "completed_ms" in h:
        _set_ms(state.completedTimestamp, h["completed_ms"])
    if "failure" in h:
        state.failureDetails.ParseFromString(h["failure"])
    if started is not None and started.tags:
        state.tags.update(started.tags)


def _set_ms(ts, raw: bytes) -> None:
    """Set a Timestamp (marking it present) to the epoch ms stored as text."""
    seconds, ms = divmod(int(raw), 1000)
    ts.seconds = seconds
    ts.nanos = ms * 1_000_000
