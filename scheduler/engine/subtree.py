"""Sub-orchestrations of an instance, read from its history: what `recursive` terminate and purge follow.

A parent's history records each child it created (SubOrchestrationInstanceCreated, its
event id = the task id) and each child's end (SubOrchestrationInstanceCompleted /
Failed, by that task id). The parent keeps no other list of its children, so nothing
else has to be kept consistent with the history.

- Recursive terminate: when an episode ends TERMINATED because of an ExecutionTerminated
  event with ``recurse`` set, each child that has not ended gets the same termination
  (through the outbox, in the same atomic step as the parent's end), and so on down.
- Recursive purge: a terminal instance's children (all it ever created) are purged
  first, depth first, then the instance itself.
"""
from __future__ import annotations

from collections.abc import Iterable

from .._proto import orchestrator_service_pb2 as pb
from ..protocol import OutboxMessage
from ..store import Store
from ..store.common import count_in_batches
from ..store.keys import HubKeys
from .events import open_tasks

BATCH = 100  # instances whose purge runs at once


def _parsed(events: Iterable[bytes]) -> list[pb.HistoryEvent]:
    return [pb.HistoryEvent.FromString(e) for e in events]


def _created(parsed: list[pb.HistoryEvent]) -> dict[int, str]:
    """Task id -> child instance id of every sub-orchestration the events record creating."""
    return {e.eventId: e.subOrchestrationInstanceCreated.instanceId
            for e in parsed if e.HasField("subOrchestrationInstanceCreated")}


def all_children(events: Iterable[bytes]) -> list[str]:
    """Ids of every child the events record creating, in creation order."""
    return list(dict.fromkeys(_created(_parsed(events)).values()))


def open_children(events: Iterable[bytes]) -> list[str]:
    """Ids of the children created in ``events`` whose end the events do not record, in creation order."""
    created = open_tasks(_parsed(events), "subOrchestrationInstanceCreated")
    return list(dict.fromkeys(e.subOrchestrationInstanceCreated.instanceId for e in created))


def recursive_termination(delivered: Iterable[bytes]) -> pb.ExecutionTerminatedEvent | None:
    """The first ExecutionTerminated event with ``recurse`` set among an episode's new events, if any."""
    for e in _parsed(delivered):
        if e.HasField("executionTerminated"):
            return e.executionTerminated if e.executionTerminated.recurse else None
    return None


def termination_messages(execution_id: str, children: list[str],
                         terminated: pb.ExecutionTerminatedEvent) -> list[OutboxMessage]:
    """Outbox messages passing a recursive termination on to each child."""
    event = pb.HistoryEvent(eventId=-1, executionTerminated=terminated).SerializeToString()
    return [OutboxMessage(f"{execution_id}:terminate:{child}", "terminate", child, event) for child in children]


async def purge_tree(store: Store, hub: HubKeys, instance_id: str, seen: set[str] | None = None) -> int:
    """Purge a terminal instance after its sub-orchestrations (each one if terminal, depth first);
    returns how many instances went. A non-terminal instance is left as it is, and so are its children."""
    seen = set() if seen is None else seen
    if instance_id in seen:
        return 0
    seen.add(instance_id)
    history = await store.terminal_history(hub, instance_id)
    if history is None:
        return 0
    deleted = 0
    for child in all_children(history):
        deleted += await purge_tree(store, hub, child, seen)
    return deleted + int(await store.purge_instance(hub, instance_id))


async def purge_trees(store: Store, hub: HubKeys, instance_ids: Iterable[str]) -> int:
    """:func:`purge_tree` of each id (up to BATCH at a time); returns how many instances went in all."""
    seen: set[str] = set()
    return await count_in_batches(instance_ids, lambda iid: purge_tree(store, hub, iid, seen), BATCH)
