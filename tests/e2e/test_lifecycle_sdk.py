"""Raise, terminate, suspend and resume with the official SDK client against a server subprocess."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import pytest
from durabletask import client
from durabletask.internal import orchestrator_service_pb2 as pb

from e2e_helpers import due_ms, poll

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus


@pytest.fixture
def sdk(server):
    c = client.TaskHubGrpcClient(host_address=server.address)
    yield c
    c.close()


def inbox_kinds(rds, hub_keys, iid: str) -> list[str]:
    raw = rds.lrange(hub_keys.for_instance(iid).inbox(iid), 0, -1)
    return [pb.HistoryEvent.FromString(e).WhichOneof("eventType") for e in raw]


def test_raised_event_waits_in_the_inbox_of_a_scheduled_instance(sdk, rds, hub_keys, probe):
    start_at = datetime.now(timezone.utc) + timedelta(minutes=5)
    iid = sdk.schedule_new_orchestration("Approval", instance_id="ev-1", start_at=start_at)
    sdk.raise_orchestration_event(iid, "Approved", data={"by": "ann"})
    raw = rds.lrange(hub_keys.for_instance(iid).inbox(iid), 0, -1)
    event = pb.HistoryEvent.FromString(raw[-1]).eventRaised
    assert (event.name, event.input.value) == ("Approved", '{"by": "ann"}')
    assert sdk.get_orchestration_state(iid).runtime_status == Status.PENDING
    where = probe.where_is(iid)
    assert (where.due_score, where.ready_score) == (due_ms(start_at), None), "not made ready early"


def test_unknown_instance_is_not_found(sdk):
    for call in (lambda: sdk.raise_orchestration_event("missing", "E"),
                 lambda: sdk.terminate_orchestration("missing"),
                 lambda: sdk.suspend_orchestration("missing"),
                 lambda: sdk.resume_orchestration("missing")):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "not found" in e.value.details()


def test_terminated_scheduled_instance_shows_its_output_and_is_never_promoted(sdk, probe):
    start_at = datetime.now(timezone.utc) + timedelta(milliseconds=300)
    due = due_ms(start_at)
    iid = sdk.schedule_new_orchestration("Doomed", input=[1], instance_id="term-1", start_at=start_at)
    sdk.terminate_orchestration(iid, output={"reason": "cancelled"})
    state = sdk.get_orchestration_state(iid)
    assert state.runtime_status == Status.TERMINATED
    assert state.get_output() == {"reason": "cancelled"} and state.get_input() == [1]
    assert state.last_updated_at >= state.created_at
    assert probe.status_counts() == {"TERMINATED": 1}

    def checked_past_due():
        at = probe.where_is(iid)
        assert (at.due_score, at.ready_score) == (None, None), "a terminated instance was queued"
        return at.now_ms > due + 500

    poll(checked_past_due, timeout=5, what="Redis time well past the due time")
    assert sdk.get_orchestration_state(iid).runtime_status == Status.TERMINATED


def test_suspend_and_resume_a_scheduled_instance(sdk, rds, hub_keys, probe):
    start_at = datetime.now(timezone.utc) + timedelta(minutes=5)
    iid = sdk.schedule_new_orchestration("Paused", instance_id="sus-1", start_at=start_at)
    sdk.suspend_orchestration(iid, reason="maintenance")
    assert sdk.get_orchestration_state(iid).runtime_status == Status.SUSPENDED
    assert probe.status_counts() == {"SUSPENDED": 1}
    where = probe.where_is(iid)
    assert (where.due_score, where.ready_score) == (None, None)
    sdk.suspend_orchestration(iid)  # already suspended: accepted, nothing changes
    sdk.resume_orchestration(iid, reason="done")
    assert sdk.get_orchestration_state(iid).runtime_status == Status.PENDING
    assert probe.status_counts() == {"PENDING": 1}
    where = probe.where_is(iid)
    assert (where.due_score, where.ready_score) == (due_ms(start_at), None)
    assert inbox_kinds(rds, hub_keys, iid) == ["executionStarted", "executionSuspended", "executionResumed"]



def test_restart_and_wait_for_completion_through_the_sdk(sdk):
    iid = sdk.schedule_new_orchestration("Job", instance_id="job-1", input={"n": 7})
    with pytest.raises(TimeoutError):
        sdk.wait_for_orchestration_completion(iid, timeout=1)  # nothing runs it: still pending
    sdk.terminate_orchestration(iid, output="stopped")
    done = sdk.wait_for_orchestration_completion(iid, timeout=10)
    assert done.runtime_status == Status.TERMINATED and done.serialized_output == '"stopped"'

    assert sdk.restart_orchestration(iid) == iid
    again = sdk.get_orchestration_state(iid)
    assert again.runtime_status == Status.PENDING and again.serialized_input == '{"n": 7}'
    with pytest.raises(grpc.RpcError) as refused:
        sdk.restart_orchestration(iid)  # pending, not finished
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
