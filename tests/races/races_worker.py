"""The race explorer's SDK worker: what an orchestration does in an episode, as an SDK worker would.

The explorer's orchestrations are scripted by Hypothesis: each episode's :class:`Plan` says what the
orchestration schedules (activities, timers, sub-orchestrations), sends (events, terminations) and
whether it ends. Like an SDK worker, the worker replays the work item (past and new events) to know
which tasks are still open and which action ids are next, and builds a ``pb.OrchestratorResponse``.
An episode whose orchestration would await nothing awaits an external event (the test may raise it):
the model remembers that (:attr:`Episode.awaits_event`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb

ENDS = (None, "COMPLETED", "FAILED", "CONTINUED_AS_NEW")


@dataclass(frozen=True)
class Plan:
    """What one episode of an orchestration does (drawn by Hypothesis)."""

    activities: int = 0
    timers: tuple[int, ...] = ()  # delays (ms) from the test clock's now
    children: tuple[str, ...] = ()  # sub-orchestration instance ids
    sends: tuple[str, ...] = ()  # instances an event is sent to
    terminates: tuple[tuple[str, bool], ...] = ()  # (instance, recursive) terminated
    end: str | None = None  # one of ENDS
    wait_event: bool = False  # also awaits an external event


@dataclass
class Replay:
    """What the orchestration's history says, as an SDK worker's replay sees it."""

    next_id: int = 1
    open_activities: set[int] = field(default_factory=set)
    open_timers: set[int] = field(default_factory=set)
    open_children: set[int] = field(default_factory=set)
    terminated: pb.ExecutionTerminatedEvent | None = None  # among the new events

    @property
    def awaits_task(self) -> bool:
        return bool(self.open_activities or self.open_timers or self.open_children)


def replay(past: list[pb.HistoryEvent], new: list[pb.HistoryEvent]) -> Replay:
    r = Replay()
    for i, e in enumerate([*past, *new]):
        if e.eventId >= 0:
            r.next_id = max(r.next_id, e.eventId + 1)
        kind = e.WhichOneof("eventType")
        if kind == "taskScheduled":
            r.open_activities.add(e.eventId)
        elif kind in ("taskCompleted", "taskFailed"):
            r.open_activities.discard(getattr(e, kind).taskScheduledId)
        elif kind == "timerCreated":
            r.open_timers.add(e.eventId)
        elif kind == "timerFired":
            r.open_timers.discard(e.timerFired.timerId)
        elif kind == "subOrchestrationInstanceCreated":
            r.open_children.add(e.eventId)
        elif kind in ("subOrchestrationInstanceCompleted", "subOrchestrationInstanceFailed"):
            r.open_children.discard(getattr(e, kind).taskScheduledId)
        elif kind == "executionTerminated" and i >= len(past) and r.terminated is None:
            r.terminated = e.executionTerminated
    return r


@dataclass
class Episode:
    response: pb.OrchestratorResponse
    ends: bool  # the orchestration ends (or continues as new) with it
    awaits_event: bool  # afterwards it (also) awaits an external event


def _text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def episode(work: pb.OrchestratorRequest, token: str, plan: Plan, now_ms: int) -> Episode:
    """The worker's response to an orchestrator work item, following ``plan``; a termination among the
    new events ends the orchestration TERMINATED whatever the plan (as the SDKs do)."""
    iid, execution = work.instanceId, work.executionId.value
    r = replay(list(work.pastEvents), list(work.newEvents))
    response = pb.OrchestratorResponse(instanceId=iid, completionToken=token)
    if r.terminated is not None:
        done = pb.CompleteOrchestrationAction(orchestrationStatus=pb.ORCHESTRATION_STATUS_TERMINATED)
        if r.terminated.HasField("input"):
            done.result.CopyFrom(r.terminated.input)
        response.actions.add(id=r.next_id, completeOrchestration=done)
        return Episode(response, True, False)
    ids = iter(range(r.next_id, r.next_id + 1000))
    for _ in range(plan.activities):
        response.actions.add(id=next(ids), scheduleTask=pb.ScheduleTaskAction(name="Work", input=_text('"x"')))
    for delay in plan.timers:
        action = response.actions.add(id=next(ids))
        action.createTimer.fireAt.FromMilliseconds(now_ms + delay)
    for child in plan.children:
        response.actions.add(id=next(ids), createSubOrchestration=pb.CreateSubOrchestrationAction(
            instanceId=child, name="Child", input=_text('"c"')))
    for target in plan.sends:
        action_id = next(ids)
        response.actions.add(id=action_id, sendEvent=pb.SendEventAction(
            instance=pb.OrchestrationInstance(instanceId=target), name="go",
            data=_text(f'"{iid}:{execution}:{action_id}"')))  # unique: the exactly-once check counts it
    for target, recurse in plan.terminates:
        action_id = next(ids)
        response.actions.add(id=action_id, terminateOrchestration=pb.TerminateOrchestrationAction(
            instanceId=target, reason=_text(f"{iid}:{execution}:{action_id}"), recurse=recurse))
    if plan.end is not None:
        status = getattr(pb, "ORCHESTRATION_STATUS_" + plan.end)
        done = pb.CompleteOrchestrationAction(orchestrationStatus=status, result=_text('"done"'))
        if plan.end == "FAILED":
            done.failureDetails.CopyFrom(pb.TaskFailureDetails(errorType="Boom", errorMessage="planned"))
        response.actions.add(id=next(ids), completeOrchestration=done)
        return Episode(response, True, False)
    awaits_task = r.awaits_task or plan.activities or plan.timers or plan.children
    return Episode(response, False, plan.wait_event or not awaits_task)
