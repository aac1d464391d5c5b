"""The official SDK worker (TaskHubGrpcWorker) runs orchestrations served by a server subprocess.

Only orchestrations that end without activities, timers or sub-orchestrations are
supported so far; anything else fails the instance with a failure that says so.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task, worker

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus


def hello(ctx: task.OrchestrationContext, name: str) -> str:
    ctx.set_custom_status({"step": "greeting"})
    return f"Hello {name}"


def when_started(ctx: task.OrchestrationContext, _) -> str:
    return ctx.current_utc_datetime.isoformat()


def boom(ctx: task.OrchestrationContext, _):
    raise ValueError("kaput")


def say(ctx, name: str) -> str:
    return name


def with_activity(ctx: task.OrchestrationContext, _):
    result = yield ctx.call_activity(say, input="x")
    return result


@pytest.fixture
def running(replicas):
    server = replicas.start("--lease-seconds", "3", "--health-ping-seconds", "0.5")
    w = worker.TaskHubGrpcWorker(host_address=server.address)
    for fn in (hello, when_started, boom, with_activity):
        w.add_orchestrator(fn)
    w.add_activity(say)
    w.start()
    c = client.TaskHubGrpcClient(host_address=server.address)
    yield c
    w.stop()
    c.close()


def test_an_orchestration_runs_to_completion(running):
    iid = running.schedule_new_orchestration(hello, input="world")
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == '"Hello world"'
    assert state.serialized_custom_status == '{"step": "greeting"}'
    kinds = [type(e).__name__ for e in running.get_orchestration_history(iid)]
    assert kinds[:2] == ["OrchestratorStartedEvent", "ExecutionStartedEvent"]
    assert kinds[-1] == "ExecutionCompletedEvent"


def test_a_delayed_start_runs_at_its_time_not_before(running):
    start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
    iid = running.schedule_new_orchestration(when_started, start_at=start_at)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    ran_at = datetime.fromisoformat(state.serialized_output.strip('"'))
    if ran_at.tzinfo is None:
        ran_at = ran_at.replace(tzinfo=timezone.utc)
    assert ran_at >= start_at, "dispatched before its scheduled start"
    assert ran_at - start_at < timedelta(seconds=5)


def test_an_orchestrator_failure_is_recorded_with_its_details(running):
    iid = running.schedule_new_orchestration(boom)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.FAILED
    assert state.failure_details.error_type.endswith("ValueError")  # the SDK reports "builtins.ValueError"
    assert "kaput" in state.failure_details.message


def test_an_unsupported_action_fails_the_instance_with_a_clear_message(running):
    iid = running.schedule_new_orchestration(with_activity)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.FAILED
    assert state.failure_details.error_type == "NotSupported"
    assert "scheduleTask" in state.failure_details.message
