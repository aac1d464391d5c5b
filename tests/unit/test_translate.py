"""Translation between protocol messages and the stored instance."""
from __future__ import annotations

import time

import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2

from scheduler import protocol
from scheduler.api import translate
from scheduler.engine import events
from scheduler._proto import orchestrator_service_pb2 as pb


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize("seconds,nanos,expected", [
    (0, 0, 0), (1, 0, 1000), (1, 1, 1001), (1, 999_999, 1001), (1, 1_000_000, 1001),
    (1, 1_000_001, 1002), (1, 999_999_999, 2000), (1_700_000_000, 123_456_789, 1_700_000_000_124),
    (-1, 500_000_000, -500),
])
def test_due_ms_rounds_up_to_the_next_millisecond(seconds, nanos, expected):
    assert protocol.due_ms(ts(seconds, nanos)) == expected


def test_due_ms_is_never_early_and_at_most_one_ms_late():
    for nanos in range(0, 1_000_000_000, 7_777_777):
        total_ns = 1_700_000_000 * 10**9 + nanos
        ms = protocol.due_ms(ts(1_700_000_000, nanos))
        assert ms * 1_000_000 >= total_ns
        assert (ms - 1) * 1_000_000 < total_ns


def full_request(**overrides) -> pb.CreateInstanceRequest:
    req = pb.CreateInstanceRequest(
        instanceId="i-1", name="Orch", version=wrappers_pb2.StringValue(value="v2"),
        input=wrappers_pb2.StringValue(value='{"a": 1}'), scheduledStartTimestamp=ts(1_900_000_000, 5),
        executionId=wrappers_pb2.StringValue(value="exec-1"), tags={"b": "2", "a": "1"},
        parentTraceContext=pb.TraceContext(traceParent="00-abc-def-01"), requestTime=ts(1_800_000_000, 7))
    req.orchestrationIdReusePolicy.replaceableStatus.extend(
        [pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED])
    for k, val in overrides.items():
        setattr(req, k, val)
    return req


def test_new_instance_from_a_full_request():
    new = translate.new_instance(full_request(), "i-1")
    assert new.instance_id == "i-1"
    # The input and the tags travel only in the start event (they would inflate the hash).
    assert new.fields == {
        "name": "Orch", "execution_id": "exec-1", "version": "v2",
        "scheduled_start": "2030-03-17T17:46:40.000000005Z", "request_time": "2027-01-15T08:00:00.000000007Z"}
    assert new.due_ms == 1_900_000_000_001  # 5 ns past the second: the next ms, never earlier
    assert new.replaceable == ("COMPLETED", "FAILED")

    event = pb.HistoryEvent.FromString(new.start_event)
    assert event.eventId == -1
    assert event.timestamp == ts(1_800_000_000, 7)  # the request time
    started = event.executionStarted
    assert started.name == "Orch"
    assert started.version.value == "v2"
    assert started.input.value == '{"a": 1}'
    assert started.scheduledStartTimestamp == ts(1_900_000_000, 5)
    assert started.orchestrationInstance.instanceId == "i-1"
    assert started.orchestrationInstance.executionId.value == "exec-1"
    assert dict(started.tags) == {"a": "1", "b": "2"}
    assert started.parentTraceContext.traceParent == "00-abc-def-01"


def test_new_instance_from_a_minimal_request():
    before = time.time_ns()
    new = translate.new_instance(pb.CreateInstanceRequest(name="Orch"), "gen-id")
    after = time.time_ns()
    assert set(new.fields) == {"name", "execution_id"}
    assert len(new.fields["execution_id"]) == 32  # generated
    assert new.due_ms is None
    assert new.replaceable == ()
    event = pb.HistoryEvent.FromString(new.start_event)
    assert before <= event.timestamp.ToNanoseconds() <= after
    started = event.executionStarted
    assert not started.HasField("version") and not started.HasField("input")
    assert not started.HasField("scheduledStartTimestamp")
    assert started.orchestrationInstance.executionId.value == new.fields["execution_id"]


def test_empty_execution_id_is_generated_and_unique():
    req = pb.CreateInstanceRequest(name="Orch", executionId=wrappers_pb2.StringValue(value=""))
    ids = {translate.new_instance(req, "x").fields["execution_id"] for _ in range(20)}
    assert len(ids) == 20 and "" not in ids


def test_empty_input_and_version_are_kept_as_given():
    req = pb.CreateInstanceRequest(name="O", input=wrappers_pb2.StringValue(value=""),
                                   version=wrappers_pb2.StringValue(value=""))
    new = translate.new_instance(req, "x")
    started = pb.HistoryEvent.FromString(new.start_event).executionStarted
    assert started.HasField("input") and started.input.value == ""
    assert new.fields["version"] == ""


def stored(**extra) -> dict[str, bytes]:
    h = {"name": b"Orch", "status": b"RUNNING", "created_ms": b"1700000000123", "updated_ms": b"1700000001456"}
    h.update({k: v if isinstance(v, bytes) else v.encode() for k, v in extra.items()})
    return h


def test_an_instance_not_changed_since_its_creation_was_last_updated_then():
    h = stored()
    del h["updated_ms"]  # create_instance.lua writes it at the first change
    state = translate.orchestration_state("i-1", h, include_payloads=False)
    assert state.lastUpdatedTimestamp == state.createdTimestamp == ts(1_700_000_000, 123_000_000)


def test_orchestration_state_minimal():
    state = translate.orchestration_state("i-1", stored(), include_payloads=True)
    assert state.instanceId == "i-1" and state.name == "Orch"
    assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_RUNNING
    assert state.createdTimestamp == ts(1_700_000_000, 123_000_000)
    assert state.lastUpdatedTimestamp == ts(1_700_000_001, 456_000_000)
    for name in ("version", "executionId", "parentInstanceId", "input", "output", "customStatus",
                 "scheduledStartTimestamp", "completedTimestamp", "failureDetails"):
        assert not state.HasField(name), name
    assert not state.tags


def start_event(**fields) -> bytes:
    return pb.HistoryEvent(executionStarted=pb.ExecutionStartedEvent(name="Orch", **fields)).SerializeToString()


FULL = dict(version="v1", execution_id="e-1", parent_instance_id="parent", output='"out"',
            custom_status='"cs"', scheduled_start="2030-03-17T17:46:40.000000005Z", completed_ms="1700000002789",
            failure=pb.TaskFailureDetails(errorType="Boom", errorMessage="it broke").SerializeToString(),
            start_event=start_event(input=wrappers_pb2.StringValue(value='"in"'), tags={"k": "v", "ü": "ñ"}),
            status="FAILED")


def test_orchestration_state_with_payloads():
    state = translate.orchestration_state("i-1", stored(**FULL), include_payloads=True)
    assert state.orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED
    assert (state.version.value, state.executionId.value, state.parentInstanceId.value) == ("v1", "e-1", "parent")
    assert (state.input.value, state.output.value, state.customStatus.value) == ('"in"', '"out"', '"cs"')
    assert state.scheduledStartTimestamp == ts(1_900_000_000, 5)
    assert state.completedTimestamp == ts(1_700_000_002, 789_000_000)
    assert (state.failureDetails.errorType, state.failureDetails.errorMessage) == ("Boom", "it broke")
    assert dict(state.tags) == {"k": "v", "ü": "ñ"}


def test_orchestration_state_without_payloads_omits_only_the_payloads():
    state = translate.orchestration_state("i-1", stored(**FULL), include_payloads=False)
    for name in ("input", "output", "customStatus"):
        assert not state.HasField(name), name
    assert state.version.value == "v1" and state.executionId.value == "e-1"
    assert state.scheduledStartTimestamp == ts(1_900_000_000, 5)
    assert state.failureDetails.errorType == "Boom"
    assert dict(state.tags) == {"k": "v", "ü": "ñ"}


def test_empty_payload_is_present_not_missing():
    state = translate.orchestration_state("i", stored(start_event=start_event(input=wrappers_pb2.StringValue(value=""))),
                                        include_payloads=True)
    assert state.HasField("input") and state.input.value == ""


def test_stored_new_instance_reads_back_through_orchestration_state():
    new = translate.new_instance(full_request(), "i-1")
    h = {k: v.encode() for k, v in new.fields.items()}
    h.update(status=b"PENDING", created_ms=b"1", updated_ms=b"2", start_event=new.start_event)
    state = translate.orchestration_state("i-1", h, include_payloads=True)
    assert state.scheduledStartTimestamp == ts(1_900_000_000, 5)
    assert state.version.value == "v2" and state.input.value == '{"a": 1}'
    assert dict(state.tags) == {"a": "1", "b": "2"}


def test_status_name_and_value_round_trip_every_status():
    for value in pb.OrchestrationStatus.values():
        name = events.status_name(value)
        assert not name.startswith("ORCHESTRATION_STATUS_")
        assert events.status_value(name) == value
    assert events.status_name(pb.ORCHESTRATION_STATUS_PENDING) == "PENDING"
    assert events.status_name(pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW) == "CONTINUED_AS_NEW"
    assert events.status_value("TERMINATED") == pb.ORCHESTRATION_STATUS_TERMINATED


def test_status_name_and_value_reject_unknowns():
    with pytest.raises(ValueError):
        events.status_name(999)
    with pytest.raises(ValueError):
        events.status_value("NOPE")


def test_the_status_names_are_every_status_of_the_protocol():
    """An unfiltered query of a schema-3 hub reads the status index range of each of protocol.STATUSES:
    a status missing there would hide its instances."""
    assert protocol.STATUSES == {events.status_name(v) for v in pb.OrchestrationStatus.values()}
    assert protocol.TERMINAL <= protocol.STATUSES and protocol.IDLE <= protocol.STATUSES
