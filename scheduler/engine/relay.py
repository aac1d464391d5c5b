"""The outbox relay: delivers messages between instances, each exactly once in effect.

Work that crosses instances (a sub-orchestration to create, an event sent to another
instance, a child's result for its parent, a termination passed on) is written to the
sender's partition outbox in the same atomic step as the sender's episode result.
Every replica runs a relay per hub, and one relay at a time drains a partition's outbox
(it holds the partition, see take_outbox.lua; a wake-up names the partition written to):
it reads outbox messages, applies each to its target (any partition) and only then
removes it. A message applied twice (a relay died in between, or outlived its hold)
changes nothing: creations are idempotent by execution id, and events, terminations,
entity messages and rewinds are de-duplicated by message id (the prelude's window).

Kinds (protocol.OutboxMessage): ``create`` (a sub-orchestration, as the SDK's reference
creates one), ``event`` (appended once), ``terminate`` (applied as TerminateInstance
is; an ended or unknown target is left alone), ``entity`` (a message for an entity,
de-duplicated by its id), ``start`` (an orchestration an entity starts) and ``rewind``
(a sub-orchestration of a rewound parent runs again, see engine/rewind.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..config import Limits
from ..protocol import TERMINAL, OutboxMessage
from ..store import Store
from ..store.keys import HubKeys
from ..store.scripts import Code
from . import rewind
from .entities import Entities
from .episodes import overflow_failure, sub_orchestration_ended
from .events import sub_orchestration_failed
from .loops import Loop
from .orchestrations import Orchestrations, new_instance

log = logging.getLogger(__name__)

BATCH = 100
HOLD_MS = 10_000  # how long a relay holds a partition's outbox without renewing it (a batch takes far less)
# Every outbox write publishes a wake-up naming its partition; an idle relay reads nothing until one
# comes, or until the replica's safety sweep (engine/hubs.py) names a few partitions to read. This cap
# only bounds a sleep.
MAX_SLEEP_SECONDS = 3600.0


class Relay:
    def __init__(self, store: Store, hub: HubKeys, orchestrations: Orchestrations, entities: Entities) -> None:
        self.store = store
        self.hub = hub
        self.orchestrations = orchestrations
        self.entities = entities
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._pending: set[int] = set(range(hub.partitions))  # partitions to read at the next step
        self._loop = Loop(f"relay[{hub.hub}]", self._step, MAX_SLEEP_SECONDS)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def wake(self, partition: int | None = None) -> None:
        """Read the outbox of ``partition`` (None: of every partition) now."""
        self._pending.update(range(self.hub.partitions) if partition is None else (partition,))
        self._loop.wake()

    async def _step(self) -> float:
        partitions, self._pending = sorted(self._pending), set()
        if not partitions:  # nothing written that we heard of: the safety sweep will name partitions
            return MAX_SLEEP_SECONDS
        try:
            left = await asyncio.gather(*(self._drain(p) for p in partitions))
        except BaseException:
            self._pending.update(partitions)
            raise
        again = {p for p, n in zip(partitions, left) if n}
        held = {p for p, n in zip(partitions, left) if n is None}
        self._pending |= again | held
        if again:
            return 0
        return HOLD_MS / 1000 if held else MAX_SLEEP_SECONDS

    async def _drain(self, partition: int) -> int | None:
        """Deliver a batch of a partition's outbox while holding it; how many messages wait after it, or
        None when another relay holds the partition (it reads again when it lets go; should it have died,
        its hold expires)."""
        raw_messages = await self.store.take_outbox(self.hub, partition, self.owner, HOLD_MS, BATCH)
        if raw_messages is None:
            return None
        if not raw_messages:
            return 0
        try:
            for raw in raw_messages:
                await self.deliver(OutboxMessage.decode(raw))
                await self.store.outbox_remove(self.hub, partition, raw)
        finally:
            left = await self.store.release_outbox(self.hub, partition, self.owner)
        return left

    async def deliver(self, message: OutboxMessage) -> None:
        if message.kind == "create":
            await self._create_child(message)
        elif message.kind == "event":
            await self._deliver_event(message)
        elif message.kind == "entity":
            notice = await self.entities.deliver(self.hub, message)
            if notice is not None:
                await self.deliver(notice)
        elif message.kind == "start":
            await self._start(message)
        elif message.kind == "terminate":
            terminated = pb.HistoryEvent.FromString(message.payload).executionTerminated
            output = terminated.input.value if terminated.HasField("input") else None
            try:
                await self.orchestrations.terminate(self.hub, message.target, output, terminated.recurse,
                                                    message_id=message.message_id)
            except errors.InstanceNotFound:
                pass  # never created, or purged meanwhile
        elif message.kind == "rewind":
            await self._rewind_child(message)
        else:
            log.warning("dropping outbox message %r of unknown kind %r", message.message_id, message.kind)

    async def _deliver_event(self, message: OutboxMessage) -> None:
        code = await self.store.deliver_event(self.hub, message.target, message.message_id, message.payload,
                                              _overflow(message, self.store.limits), message.execution)
        if code in (Code.INBOX_FULL, Code.TOO_LARGE):
            log.warning("task hub %r: instance %r had no room for message %r; it fails at its next dispatch",
                        self.hub.hub, message.target, message.message_id)
        elif code is Code.CHANGED:
            log.debug("task hub %r: message %r was for execution %r of instance %r, which is another one now",
                      self.hub.hub, message.message_id, message.execution, message.target)

    async def _start(self, message: OutboxMessage) -> None:
        """Start an orchestration an entity's batch asked for, as the SDK's reference does: replacing an ended
        instance of that id (a schedule with a fixed orchestration id runs it again at each interval); an id a
        live instance holds is left as it is. Delivered again (same execution id), it changes nothing."""
        event = pb.HistoryEvent.FromString(message.payload)
        try:
            await self.orchestrations.start(self.hub, new_instance(event.executionStarted, replaceable=tuple(
                sorted(TERMINAL)), same_is_done=True))
        except errors.InstanceExists as exc:
            if not exc.done_before:
                log.info("task hub %r: an entity's new orchestration was not started: %s", self.hub.hub, exc)

    async def _create_child(self, message: OutboxMessage) -> None:
        """Create a sub-orchestration, as the SDK's reference does: replacing an ended instance of that id;
        if one that has not ended holds the id, the parent's task fails. Delivered again (same execution
        id), it changes nothing."""
        event = pb.HistoryEvent.FromString(message.payload)
        child = new_instance(event.executionStarted, at=event.timestamp, replaceable=tuple(sorted(TERMINAL)),
                             same_is_done=True)
        try:
            await self.orchestrations.start(self.hub, child)
        except errors.InstanceExists as exc:
            if exc.done_before:
                return
            parent = event.executionStarted.parentInstance
            failed = sub_orchestration_failed(parent.taskScheduledId, pb.TaskFailureDetails(
                errorType="InstanceExists", errorMessage=str(exc), isNonRetriable=True))
            await self._deliver_event(OutboxMessage(
                f"{message.message_id}:taken", "event", parent.orchestrationInstance.instanceId, failed,
                parent.orchestrationInstance.executionId.value))

    async def _rewind_child(self, message: OutboxMessage) -> None:
        """Run a sub-orchestration of a rewound parent again: rewound if it failed, created again if it is
        gone. One that ended otherwise tells the parent again how (the parent had failed when its end came,
        and dropped it). Delivered again, it changes nothing."""
        rewound = pb.HistoryEvent.FromString(message.payload).executionRewound
        code, status = await self.orchestrations.rewind_child(self.hub, message.target, message.message_id, rewound)
        if code is Code.NOT_FOUND:
            h = None
        elif code is Code.WRONG_STATUS and status in TERMINAL:
            h = await self.store.get_instance(self.hub, message.target)
        else:
            return  # rewound (now or before), or still running: its end will reach the parent
        if h is None:
            await self._create_child(OutboxMessage(message.message_id, "create", message.target,
                                                   rewind.started_again(rewound, message.message_id)))
            return
        status = h["status"].decode()
        if status not in TERMINAL:
            return
        output = h["output"].decode() if "output" in h else None
        event = sub_orchestration_ended(rewound.parentInstance.taskScheduledId, status, output, h.get("failure"))
        parent = rewound.parentInstance.orchestrationInstance
        await self._deliver_event(OutboxMessage(f"{message.message_id}:ended", "event", parent.instanceId, event,
                                                parent.executionId.value))


def _overflow(message: OutboxMessage, limits: Limits) -> str:
    """The failure of the target of an event it has no room for."""
    event = pb.HistoryEvent.FromString(message.payload)
    size = len(message.payload)
    if event.HasField("subOrchestrationInstanceCompleted"):
        what = (f"the output of sub-orchestration task {event.subOrchestrationInstanceCompleted.taskScheduledId} "
                f"is {size} bytes")
        return overflow_failure("SubOrchestrationOutputTooLarge", what, limits)
    if event.HasField("eventRaised"):
        return overflow_failure("EventTooLarge", f"the event '{event.eventRaised.name}' sent to it is {size} bytes",
                                limits)
    return overflow_failure("EventTooLarge", f"a {event.WhichOneof('eventType')} event sent to it is {size} bytes",
                            limits)
