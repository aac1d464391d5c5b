"""Rewinding a failed orchestration, as the SDKs define it: what a worker's rewind of the history means.

1. RewindInstance (:meth:`Orchestrations.rewind`): a FAILED instance becomes RUNNING with an
   ExecutionRewound event as its one pending event (see store/lua/rewind_instance.lua).
2. The worker that gets that episode (its history ends with the failure) answers with a
   RewindOrchestrationAction: the history without the results of failed tasks, the schedules
   of failed activities, and the end, under a new execution id.
3. :func:`plan` reads that answer, which replaces the history in one step (see
   store/lua/rewind_orchestration.lua); the worker's replay of the new history schedules the
   failed activities again (those that succeeded keep their results and do not run again).
   What the new history waits for and nothing would deliver any more (the instance had
   failed) goes again in the same step: activities that were under way (their results were
   dropped, or carry the old execution id), timers (dropped when it failed) and each
   sub-orchestration without an end, through a "rewind" outbox message (:func:`child_message`)
   that the relay applies: the child is rewound too if it failed (:func:`child_event`, with
   the parent's new execution id), created again if it is gone (:func:`started_again`), and
   tells the parent again how it ended otherwise.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf import wrappers_pb2

from .._proto import orchestrator_service_pb2 as pb
from ..protocol import OutboxMessage, is_valid_id, quote
from .episodes import activity, timer
from .events import copy_set, execution_rewound, history_event, open_tasks, text


class InvalidRewind(ValueError):
    """The rewound history is not a new execution of the instance: the orchestration fails instead."""


@dataclass(frozen=True)
class Rewind:
    """What a worker's rewind writes (see Store.rewind_orchestration)."""

    history: list[bytes]
    start_index: int  # of its ExecutionStarted event
    fields: dict[str, str]  # of the instance hash, from its ExecutionStarted event
    activities: list[tuple[str, bytes]]
    timers: list[tuple[int, bytes]]
    outbox: list[OutboxMessage]


def plan(action: pb.RewindOrchestrationAction, instance_id: str) -> Rewind:
    """What the worker's rewind of ``instance_id`` writes; InvalidRewind when its history does not start
    one execution of this instance."""
    history = list(action.newHistory)
    starts = [i for i, e in enumerate(history) if e.HasField("executionStarted")]
    if len(starts) != 1:
        raise InvalidRewind(f"the rewound history holds {len(starts)} ExecutionStarted events; it must hold one")
    started = history[starts[0]].executionStarted
    execution_id = started.orchestrationInstance.executionId.value
    if started.orchestrationInstance.instanceId != instance_id or not is_valid_id(execution_id):
        raise InvalidRewind(f"the rewound history starts execution {quote(execution_id)} of instance "
                            f"{quote(started.orchestrationInstance.instanceId)}, not an execution of this instance")
    fields = {"execution_id": execution_id}
    if started.HasField("parentInstance"):
        fields["parent_execution_id"] = started.parentInstance.orchestrationInstance.executionId.value
    reason = next((e.executionRewound.reason.value for e in reversed(history) if e.HasField("executionRewound")
                   and e.executionRewound.HasField("reason")), None)
    return Rewind(
        history=[e.SerializeToString() for e in history], start_index=starts[0], fields=fields,
        activities=[activity(e.taskScheduled, e.eventId, instance_id, execution_id)
                    for e in open_tasks(history, "taskScheduled")],
        timers=[timer(e.timerCreated.fireAt, e.eventId) for e in open_tasks(history, "timerCreated")],
        outbox=[child_message(e, instance_id, execution_id, started.name, reason)
                for e in open_tasks(history, "subOrchestrationInstanceCreated")])


def child_message(created: pb.HistoryEvent, instance_id: str, execution_id: str, name: str,
                  reason: str | None) -> OutboxMessage:
    """The "rewind" message for a sub-orchestration that the rewound history (execution ``execution_id``
    of ``instance_id``, named ``name``) created and holds no end of: an ExecutionRewound event that names
    the child as it was created and its parent as it is now."""
    sub = created.subOrchestrationInstanceCreated
    parent = pb.ParentInstanceInfo(
        taskScheduledId=created.eventId, name=wrappers_pb2.StringValue(value=name),
        orchestrationInstance=pb.OrchestrationInstance(instanceId=instance_id,
                                                       executionId=wrappers_pb2.StringValue(value=execution_id)))
    rewound = pb.ExecutionRewoundEvent(reason=text(reason), parentExecutionId=text(execution_id),
                                       instanceId=text(sub.instanceId), name=text(sub.name), tags=sub.tags,
                                       parentInstance=parent)
    copy_set(sub, rewound)
    return OutboxMessage(f"{execution_id}:rewind:{created.eventId}", "rewind", sub.instanceId,
                         history_event(executionRewound=rewound))


def child_event(rewound: pb.ExecutionRewoundEvent) -> bytes:
    """The ExecutionRewound event a failed child gets: the reason and its parent's new execution id (the
    SDK's rewind writes it into the child's parent link)."""
    return execution_rewound(rewound.reason.value if rewound.HasField("reason") else None,
                             rewound.parentExecutionId.value)


def started_again(rewound: pb.ExecutionRewoundEvent, message_id: str) -> bytes:
    """The ExecutionStarted event of a child created again (it was purged): as it was created, with its
    parent as it is now. Its execution id comes from the message, so a creation delivered again is seen
    to be the same one."""
    execution_id = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    started = pb.ExecutionStartedEvent(
        name=rewound.name.value, tags=rewound.tags, parentInstance=rewound.parentInstance,
        orchestrationInstance=pb.OrchestrationInstance(instanceId=rewound.instanceId.value,
                                                       executionId=wrappers_pb2.StringValue(value=execution_id)))
    copy_set(rewound, started)
    return history_event(executionStarted=started)
