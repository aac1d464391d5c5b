"""Which children recursive terminate and purge follow, read from history events."""
from __future__ import annotations

from scheduler.engine import subtree
from scheduler._proto import orchestrator_service_pb2 as pb


def created(task_id: int, child: str) -> bytes:
    return pb.HistoryEvent(eventId=task_id, subOrchestrationInstanceCreated=pb.SubOrchestrationInstanceCreatedEvent(
        instanceId=child, name="Child")).SerializeToString()


def completed(task_id: int) -> bytes:
    return pb.HistoryEvent(eventId=-1, subOrchestrationInstanceCompleted=pb.SubOrchestrationInstanceCompletedEvent(
        taskScheduledId=task_id)).SerializeToString()


def failed(task_id: int) -> bytes:
    return pb.HistoryEvent(eventId=-1, subOrchestrationInstanceFailed=pb.SubOrchestrationInstanceFailedEvent(
        taskScheduledId=task_id)).SerializeToString()


def terminated(recurse: bool) -> bytes:
    return pb.HistoryEvent(eventId=-1, executionTerminated=pb.ExecutionTerminatedEvent(
        recurse=recurse)).SerializeToString()


def raised() -> bytes:
    return pb.HistoryEvent(eventId=-1, eventRaised=pb.EventRaisedEvent(name="go")).SerializeToString()


def test_open_children_are_those_created_and_not_ended():
    events = [created(1, "a"), created(2, "b"), created(3, "c"), completed(1), raised(), failed(3), created(4, "d")]
    assert subtree.open_children(events) == ["b", "d"]
    assert subtree.all_children(events) == ["a", "b", "c", "d"]


def test_a_recursive_termination_is_found_only_when_the_first_termination_recurses():
    assert subtree.recursive_termination([raised(), terminated(True)]).recurse
    assert subtree.recursive_termination([raised(), terminated(False), terminated(True)]) is None
    assert subtree.recursive_termination([raised()]) is None


def test_termination_messages_carry_the_event_to_each_child_with_stable_ids():
    reason = pb.ExecutionTerminatedEvent(recurse=True)
    reason.input.value = '"stop"'
    messages = subtree.termination_messages("x1", ["b", "d"], reason)
    assert [(m.message_id, m.kind, m.target) for m in messages] == [("x1:terminate:b", "terminate", "b"),
                                                                    ("x1:terminate:d", "terminate", "d")]
    event = pb.HistoryEvent.FromString(messages[0].payload).executionTerminated
    assert event.recurse and event.input.value == '"stop"'
