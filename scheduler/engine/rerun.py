"""Running an ended orchestration again from one of its activities, as a new instance (Dapr's
RerunWorkflowFromEvent): the new instance's history is the source's up to that activity's TaskScheduled
event (kept, with a new input if asked), so its worker replays the prefix and the activity runs again,
with every task that was still under way at that point (activities, timers).

Two store steps, each atomic: the new instance is created and claimed by this step alone (no worker holds
it), then its history is put in place under that claim by the rewind's step (store/lua/
rewind_orchestration.lua), which also queues what the history waits for and makes it ready. If the
replica dies between the two, the claim's lease expires and the new instance runs from its start.
"""
from __future__ import annotations

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..protocol import ACTIVITY, ORCHESTRATION, TERMINAL, claim_token, new_id, quote
from ..store.keys import HubKeys, partition_of
from . import events, rewind
from .orchestrations import new_instance

HISTORY_PAGE = 1000


async def rerun_from_event(orchestrations, hub: HubKeys, source_id: str, event_id: int, instance_id: str,
                           new_input: str | None) -> None:
    """Start ``instance_id`` as a rerun of ``source_id`` from its activity event ``event_id`` (``new_input``:
    the activity's input, None to keep it). NOT_FOUND, FAILED_PRECONDITION (the source has not ended, or a
    sub-orchestration was under way at that event), INVALID_ARGUMENT (no activity event of that id),
    ALREADY_EXISTS (``instance_id`` is taken): nothing written."""
    store = orchestrations.store
    h = await store.get_instance(hub, source_id)
    if h is None:
        raise errors.InstanceNotFound(source_id)
    if h["status"].decode() not in TERMINAL:
        raise errors.FailedPrecondition(f"instance {quote(source_id)} is {h['status'].decode()}: only an instance "
                                        "that has ended can be run again from one of its events")
    history = await _history(store, hub, source_id)
    at = next((i for i, e in enumerate(history) if e.eventId == event_id and e.HasField("taskScheduled")), None)
    if at is None:
        raise errors.InvalidRequest(f"event {event_id} of {quote(source_id)} is not an activity's TaskScheduled event")
    prefix = history[:at]
    if events.open_tasks(prefix, "subOrchestrationInstanceCreated"):
        raise errors.FailedPrecondition(f"a sub-orchestration of {quote(source_id)} was under way at event "
                                        f"{event_id}: running it again from there is not supported")
    execution_id = new_id()
    started = None
    for event in prefix:
        if event.HasField("executionStarted"):
            started = event.executionStarted
            started.orchestrationInstance.instanceId = instance_id
            started.orchestrationInstance.executionId.value = execution_id
            started.ClearField("parentInstance")
            started.ClearField("scheduledStartTimestamp")
    if started is None:
        raise errors.FailedPrecondition(f"the history of {quote(source_id)} holds no ExecutionStarted event before "
                                        f"event {event_id}")
    target = history[at]
    if new_input is not None:
        target.taskScheduled.input.value = new_input
    plan = rewind.plan(pb.RewindOrchestrationAction(newHistory=[*prefix, target]), instance_id)
    token = claim_token(hub.hub, partition_of(instance_id, hub.partitions), ORCHESTRATION, instance_id)
    _, claim = await store.create_instance_and_claim(hub, new_instance(started), token,
                                                     int(orchestrations.dispatcher.options.lease_seconds * 1000),
                                                     events.orchestrator_started())
    if claim is None:  # it is ready now, so the step claims it: never seen
        raise RuntimeError(f"instance {quote(instance_id)} was created but not claimed")
    await store.rewind_orchestration(hub, instance_id, token, plan.history, plan.start_index, plan.fields,
                                     plan.activities, plan.timers, [])
    orchestrations.dispatcher.offer(hub.hub, ACTIVITY, [item for item, _ in plan.activities])
    orchestrations.dispatcher.offer(hub.hub, ORCHESTRATION, [instance_id])


async def _history(store, hub: HubKeys, instance_id: str) -> list[pb.HistoryEvent]:
    raw: list[bytes] = []
    while True:
        page = await store.history_page(hub, instance_id, len(raw), HISTORY_PAGE)
        if page is None:
            raise errors.InstanceNotFound(instance_id)
        raw += page
        if len(page) < HISTORY_PAGE:
            return [pb.HistoryEvent.FromString(e) for e in raw]
