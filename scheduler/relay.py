"""The outbox relay: delivers messages between instances, each exactly once in effect.

Work that crosses instances (a sub-orchestration to create, an event sent to another
instance, a child's result for its parent) is written to the sender's partition
outbox in the same atomic step as the sender's episode result. Every replica runs a
relay per hub: it reads outbox messages, applies each to its target (any partition)
and only then removes it. A message applied twice (a replica died in between) changes
nothing: creations are idempotent by instance id and events are de-duplicated by
message id in the target's ``delivered`` set.

A message is ``<id>\\n<kind>\\n<target instance id>\\n<payload>``: kind ``create``
(payload: the child's ExecutionStarted event), ``event`` (payload: the event to append)
or ``terminate`` (payload: an ExecutionTerminated event, applied as TerminateInstance
is: at once to an instance never dispatched, through its inbox to a running one; an
ended or unknown target is left alone).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging

from . import convert, errors
from ._proto import orchestrator_service_pb2 as pb
from .keys import HubKeys
from .loops import Loop
from .store import NewInstance, Store
from .store_queries import TERMINAL

log = logging.getLogger(__name__)

BATCH = 100
MAX_SLEEP_SECONDS = 1.0


def message(message_id: str, kind: str, target: str, payload: bytes) -> bytes:
    return f"{message_id}\n{kind}\n{target}\n".encode() + payload


def parse(raw: bytes) -> tuple[str, str, str, bytes]:
    message_id, kind, target, payload = raw.split(b"\n", 3)
    return message_id.decode(), kind.decode(), target.decode(), payload


def child_instance(start_event: bytes) -> NewInstance:
    """The NewInstance of a sub-orchestration from its ExecutionStarted event."""
    started = pb.HistoryEvent.FromString(start_event).executionStarted
    parent = started.parentInstance
    fields = {"name": started.name, "execution_id": started.orchestrationInstance.executionId.value,
              "parent_instance_id": parent.orchestrationInstance.instanceId,
              "parent_execution_id": parent.orchestrationInstance.executionId.value,
              "parent_task_id": str(parent.taskScheduledId)}
    if started.HasField("version"):
        fields["version"] = started.version.value
    return NewInstance(started.orchestrationInstance.instanceId, fields, start_event)


async def terminate(store: Store, hub: HubKeys, instance_id: str, event: bytes, output: str | None) -> str:
    """TerminateInstance's effect (see Store.terminate_instance). A sub-orchestration that no worker
    ran yet ends at once, without an episode, so the message telling its parent goes with it.
    Returns the status before."""
    notice = b""
    h = await store.get_instance(hub, instance_id)
    if h is not None and (h["status"] == b"PENDING" or h.get("prev_status") == b"PENDING"):
        told = convert.parent_notification(h, convert.Episode(status="TERMINATED", output=output))
        notice = b"" if told is None else message(*told)
    return await store.terminate_instance(hub, instance_id, event, output, notice)


class Relay:
    def __init__(self, store: Store, hub: HubKeys) -> None:
        self.store = store
        self.hub = hub
        self._loop = Loop(f"relay[{hub.hub}]", self._step, MAX_SLEEP_SECONDS)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def wake(self) -> None:
        self._loop.wake()

    async def _step(self) -> float:
        counts = await asyncio.gather(*(self._drain(p) for p in range(self.hub.partitions)))
        return 0 if any(n >= BATCH for n in counts) else MAX_SLEEP_SECONDS

    async def _drain(self, partition: int) -> int:
        outbox = self.hub.partition(partition).outbox
        raw_messages = await self.store.redis.lrange(outbox, 0, BATCH - 1)
        for raw in raw_messages:
            await self._deliver(raw)
            await self.store.redis.lrem(outbox, 1, raw)
        return len(raw_messages)

    async def _create_child(self, message_id: str, child: NewInstance) -> None:
        """Create a sub-orchestration, as the SDK's reference does: replacing an ended instance of that id;
        if one that has not ended holds the id, the parent's task fails. Delivered again (same execution
        id), it changes nothing."""
        try:
            await self.store.create_instance(self.hub, dataclasses.replace(
                child, replaceable=tuple(sorted(TERMINAL)), same_is_done=True))
        except errors.InstanceExists as exc:
            if exc.done_before:
                return
            failed = convert.sub_orchestration_failed(int(child.fields["parent_task_id"]), pb.TaskFailureDetails(
                errorType="InstanceExists", errorMessage=str(exc), isNonRetriable=True))
            await self.store.deliver_event(self.hub, child.fields["parent_instance_id"], f"{message_id}:taken",
                                           failed)

    async def _deliver(self, raw: bytes) -> None:
        message_id, kind, target, payload = parse(raw)
        if kind == "create":
            await self._create_child(message_id, child_instance(payload))
        elif kind == "event":
            await self.store.deliver_event(self.hub, target, message_id, payload)
        elif kind == "terminate":
            terminated = pb.HistoryEvent.FromString(payload).executionTerminated
            output = terminated.input.value if terminated.HasField("input") else None
            try:
                await terminate(self.store, self.hub, target, payload, output)
            except errors.InstanceNotFound:
                pass  # never created, or purged meanwhile
        else:
            log.warning("dropping outbox message %r of unknown kind %r", message_id, kind)
