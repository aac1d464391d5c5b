"""Translation between the protocol's requests and replies and what the engine and store take.

The instance hash holds scalar fields as plain strings so that ``HGETALL`` is readable:
``name``, ``version``, ``status`` (``PENDING``, ``RUNNING``, ...), ``output``,
``custom_status``, ``execution_id``, ``parent_instance_id``, ``created_ms``/``updated_ms``/
``completed_ms`` (epoch ms), ``scheduled_start`` and ``request_time`` (RFC 3339, exactly as
given), ``failure`` (serialized TaskFailureDetails), ``start`` (where the start event is) and,
once rewound, ``rewinds`` (how many times) and ``rewinding`` (until the worker has rewound it).
The input and the tags live only in the ExecutionStarted event (see
:func:`scheduler.engine.orchestrations.new_instance`).
"""
from __future__ import annotations

from google.protobuf import wrappers_pb2

from .._proto import orchestrator_service_pb2 as pb
from ..engine.events import status_name, status_value
from ..engine.orchestrations import new_instance as instance_record
from ..protocol import new_id, ts_from_ms, ts_from_text
from ..store import NewInstance


def new_instance(req: pb.CreateInstanceRequest, instance_id: str) -> NewInstance:
    """The store record of a validated CreateInstanceRequest."""
    execution_id = req.executionId.value if req.HasField("executionId") and req.executionId.value else new_id()
    started = pb.ExecutionStartedEvent(
        name=req.name,
        orchestrationInstance=pb.OrchestrationInstance(
            instanceId=instance_id, executionId=wrappers_pb2.StringValue(value=execution_id)),
        tags=req.tags,
    )
    for name in ("version", "input", "scheduledStartTimestamp", "parentTraceContext"):
        if req.HasField(name):
            getattr(started, name).CopyFrom(getattr(req, name))
    has_request_time = req.HasField("requestTime")
    return instance_record(started, at=req.requestTime if has_request_time else None,
                           request_time=req.requestTime.ToJsonString() if has_request_time else None,
                           replaceable=tuple(status_name(s) for s in req.orchestrationIdReusePolicy.replaceableStatus))


_OPTIONAL_TEXT = (("version", "version"), ("execution_id", "executionId"), ("parent_instance_id", "parentInstanceId"))


def orchestration_state(instance_id: str, h: dict[str, bytes], include_payloads: bool) -> pb.OrchestrationState:
    """The OrchestrationState of a stored instance hash."""
    state = pb.OrchestrationState(
        instanceId=instance_id,
        name=h["name"].decode(),
        orchestrationStatus=status_value(h["status"].decode()),
        createdTimestamp=ts_from_ms(int(h["created_ms"])),
        lastUpdatedTimestamp=ts_from_ms(int(h["updated_ms"])),
    )
    for name, attr in _OPTIONAL_TEXT:
        if name in h:
            getattr(state, attr).value = h[name].decode()
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
        state.completedTimestamp.CopyFrom(ts_from_ms(int(h["completed_ms"])))
    if "failure" in h:
        state.failureDetails.ParseFromString(h["failure"])
    if started is not None and started.tags:
        state.tags.update(started.tags)
    return state
