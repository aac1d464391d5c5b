"""Dapr's messages to ours and back (scheduler/api/dapr/translate.py): the fields whose numbers the two
contracts give other meanings, and what only Dapr has, passing through our engine's episode reading."""
from __future__ import annotations

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto.dapr import orchestrator_service_pb2 as dpb
from scheduler.api.dapr import translate
from scheduler.engine.episodes import interpret


def _dapr_response() -> dpb.OrchestratorResponse:
    router = dpb.TaskRouter(sourceAppID="app-a", targetAppID="app-b")
    return dpb.OrchestratorResponse(instanceId="i", completionToken="t", actions=[
        dpb.OrchestratorAction(id=1, router=router, scheduleTask=dpb.ScheduleTaskAction(
            name="act", router=router, taskExecutionId="te-1")),
        dpb.OrchestratorAction(id=2, createTimer=dpb.CreateTimerAction(name="nap")),
    ], version=dpb.OrchestrationVersion(name="v2", patches=["p1"]))


def test_task_execution_id_and_router_do_not_land_on_our_fields_of_their_numbers():
    ours, stalled = translate.orchestrator_response(_dapr_response())
    assert not stalled
    task = ours.actions[0].scheduleTask
    assert task.tags == {translate.TASK_EXECUTION_ID: "te-1"}
    assert not task.HasField("parentTraceContext")  # Dapr's 5 (taskExecutionId) is not our trace context
    assert ours.actions[0].WhichOneof("orchestratorActionType") == "scheduleTask"  # router (9) is no rewind
    assert not ours.HasField("orchestrationTraceContext")  # Dapr's 6 (version)


def test_an_episode_keeps_the_task_execution_id_and_the_timer_name_through_our_engine():
    ours, _ = translate.orchestrator_response(_dapr_response())
    episode = interpret(ours, "i", "e", "wf")
    events = [pb.HistoryEvent.FromString(raw) for raw in episode.events]
    out = translate.history_out(events)
    assert out[0].taskScheduled.taskExecutionId == "te-1" and out[0].taskScheduled.name == "act"
    assert out[1].timerCreated.name == "nap"  # unknown to our contract, kept in the stored bytes
    _, request = episode.activities[0]
    item = translate.work_item(pb.WorkItem(activityRequest=pb.ActivityRequest.FromString(request), completionToken="c"))
    assert item.activityRequest.taskExecutionId == "te-1" and item.activityRequest.name == "act"


def _event(**kind) -> pb.HistoryEvent:
    event = pb.HistoryEvent(eventId=kind.pop("event_id", -1), **kind)
    event.timestamp.FromSeconds(1)
    return event


def test_results_answer_with_their_tasks_execution_id_and_versions_fold_into_orchestrator_started():
    record = pb.HistoryEvent.FromString(translate.version_record(_dapr_response()))
    history = [
        _event(orchestratorStarted=pb.OrchestratorStartedEvent()),
        _event(executionStarted=pb.ExecutionStartedEvent(name="wf")),
        record,
        _event(event_id=1, taskScheduled=pb.TaskScheduledEvent(name="act", tags={translate.TASK_EXECUTION_ID: "te-1"})),
        _event(orchestratorStarted=pb.OrchestratorStartedEvent()),
        _event(executionRewound=pb.ExecutionRewoundEvent()),
        _event(taskCompleted=pb.TaskCompletedEvent(taskScheduledId=1)),
        _event(taskFailed=pb.TaskFailedEvent(taskScheduledId=7)),
    ]
    out = translate.history_out(history)
    kinds = [e.WhichOneof("eventType") for e in out]
    assert kinds == ["orchestratorStarted", "executionStarted", "taskScheduled", "orchestratorStarted",
                     "taskCompleted", "taskFailed"]  # the record folded in, the rewind left out
    assert [e.orchestratorStarted.version.name for e in out if e.HasField("orchestratorStarted")] == ["v2", "v2"]
    assert list(out[0].orchestratorStarted.version.patches) == ["p1"]
    assert out[4].taskCompleted.taskExecutionId == "te-1"
    assert out[5].taskFailed.taskExecutionId == ""  # no such task


def test_a_worker_without_the_version_stalls_and_its_actions_are_dropped():
    response = dpb.OrchestratorResponse(instanceId="i", actions=[
        dpb.OrchestratorAction(id=3, orchestratorVersionNotAvailable=dpb.OrchestratorVersionNotAvailableAction()),
        dpb.OrchestratorAction(id=4, createTimer=dpb.CreateTimerAction())])
    ours, stalled = translate.orchestrator_response(response)
    assert stalled and not ours.actions
    event = dpb.HistoryEvent.FromString(translate.stalled_event("why"))
    assert event.executionStalled.reason == dpb.VERSION_NOT_AVAILABLE and event.HasField("timestamp")
    assert translate.version_record(response) is None
