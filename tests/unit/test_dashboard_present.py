"""What the dashboard's JSON says about histories, payloads and schedules (scheduler/api/dashboard/present.py)."""
from __future__ import annotations

import json

from google.protobuf import timestamp_pb2, wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.api.dashboard import present


def at(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def test_bars_go_from_scheduled_to_completed_and_pair_by_id():
    events = [
        pb.HistoryEvent(eventId=-1, timestamp=at(1000), executionStarted=pb.ExecutionStartedEvent(name="Orch")),
        pb.HistoryEvent(eventId=-1, timestamp=at(1500), orchestratorStarted=pb.OrchestratorStartedEvent()),
        pb.HistoryEvent(eventId=0, timestamp=at(1510), taskScheduled=pb.TaskScheduledEvent(name="A", input=text("1"))),
        pb.HistoryEvent(eventId=1, timestamp=at(1510), taskScheduled=pb.TaskScheduledEvent(name="B")),
        pb.HistoryEvent(eventId=2, timestamp=at(1510), timerCreated=pb.TimerCreatedEvent(fireAt=at(9000))),
        pb.HistoryEvent(eventId=3, timestamp=at(1510), subOrchestrationInstanceCreated=pb.SubOrchestrationInstanceCreatedEvent(
            name="Child", instanceId="kid")),
        pb.HistoryEvent(eventId=-1, timestamp=at(1700), taskFailed=pb.TaskFailedEvent(
            taskScheduledId=1, failureDetails=pb.TaskFailureDetails(errorType="ValueError", errorMessage="no"))),
        pb.HistoryEvent(eventId=-1, timestamp=at(1800), taskCompleted=pb.TaskCompletedEvent(
            taskScheduledId=0, result=text("x" * 1000))),
        pb.HistoryEvent(eventId=-1, timestamp=at(1900), eventRaised=pb.EventRaisedEvent(name="go")),
    ]
    tl = present.timeline(events)
    bars = {b["name"]: b for b in tl["bars"]}
    assert (bars["A"]["scheduledMs"], bars["A"]["endMs"], bars["A"]["outcome"]) == (1510, 1800, "completed")
    assert bars["A"]["result"]["truncated"] and len(bars["A"]["result"]["text"]) == present.EVENT_PREVIEW_CHARS
    assert bars["A"]["result"]["size"] == 1000
    assert (bars["B"]["endMs"], bars["B"]["outcome"]) == (1700, "failed") and "ValueError: no" in bars["B"]["result"]["text"]
    assert (bars["timer"]["due"], bars["timer"]["endMs"], bars["timer"]["outcome"]) == (9000, None, "pending")
    assert bars["Child"]["instance"] == "kid" and tl["children"] == ["kid"]
    assert tl["firstRunMs"] == 1500
    assert [(p["kind"], p["name"]) for p in tl["points"]] == [("executionStarted", "Orch"), ("eventRaised", "go")]


def test_an_instance_shows_payloads_cut_and_whole_on_request():
    state = pb.OrchestrationState(instanceId="i", name="Orch", orchestrationStatus=pb.ORCHESTRATION_STATUS_FAILED,
                                  output=text("y" * 5000))
    state.failureDetails.CopyFrom(pb.TaskFailureDetails(errorType="Boom", errorMessage="bad",
                                                        innerFailure=pb.TaskFailureDetails(errorType="Inner")))
    detail = present.instance_detail(state)
    assert detail["status"] == "FAILED" and detail["input"] is None
    assert detail["output"]["truncated"] and len(detail["output"]["text"]) == present.PREVIEW_CHARS
    assert present.payload_of(state, "output") == "y" * 5000
    assert present.payload_of(state, "failure") == "Boom: bad\ncaused by Inner: "


def test_a_schedule_reads_the_sdk_state_in_both_shapes():
    dotnet = {"Status": 2, "NextRunAt": "2026-12-08T03:00:00+00:00", "LastRunAt": None,
              "ScheduleConfiguration": {"ScheduleId": "nightly", "OrchestrationName": "job", "Interval": "06:00:00"}}
    legacy = {"status": "Active", "next_run_at": "2026-12-08T03:00:00+00:00",
              "schedule_configuration": {"orchestration_name": "job", "interval_seconds": 60}}
    for state, status, interval in ((dotnet, "Paused", "06:00:00"), (legacy, "Active", "60 s")):
        entity = pb.EntityMetadata(instanceId="@schedule@nightly", lastModifiedTime=at(5000),
                                   serializedState=text(json.dumps(state)))
        row = present.schedule_row(entity)
        assert (row["id"], row["status"], row["interval"], row["orchestration"]) == ("nightly", status, interval, "job")
        assert row["nextRun"] == "2026-12-08T03:00:00+00:00" and row["lastModifiedMs"] == 5000
    broken = present.schedule_row(pb.EntityMetadata(instanceId="@schedule@x", serializedState=text("{not json")))
    assert broken["id"] == "x" and broken["status"] is None
