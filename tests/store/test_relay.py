"""Messages between instances: delivered once in effect, whatever the relay repeats."""
from __future__ import annotations

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.config import Config
from scheduler.engine.dispatcher import Dispatcher
from scheduler.engine.entities import Entities
from scheduler.engine.orchestrations import Orchestrations
from scheduler.engine.relay import Relay
from scheduler.engine.waiters import Waiters
from scheduler.protocol import OutboxMessage
from scheduler.store.scripts import Code
from store_helpers import new


def make_relay(store, hub) -> Relay:
    dispatcher = Dispatcher(store, Config())
    orchestrations = Orchestrations(store, dispatcher, Waiters())
    return Relay(store, hub, orchestrations, Entities(store, dispatcher))


def encoded(message_id: str, kind: str, target: str, payload: bytes) -> bytes:
    return OutboxMessage(message_id, kind, target, payload).encode()


def raised(name: str) -> bytes:
    return pb.HistoryEvent(eventId=-1, eventRaised=pb.EventRaisedEvent(name=name)).SerializeToString()


async def test_an_event_message_is_delivered_once(store, hub, redis):
    await store.create_instance(hub, new("target"))
    pk = hub.for_instance("target")
    before = await redis.llen(pk.inbox("target"))
    assert await store.deliver_event(hub, "target", "sender:e1:3", raised("go")) is Code.OK
    assert await store.deliver_event(hub, "target", "sender:e1:3", raised("go")) is Code.DONE_BEFORE  # a repeat
    assert await redis.llen(pk.inbox("target")) == before + 1
    assert await store.deliver_event(hub, "nobody", "sender:e1:4", raised("go")) is Code.NOT_FOUND


async def test_the_relay_creates_a_child_once_and_empties_the_outbox(store, hub, redis):
    started = pb.ExecutionStartedEvent(
        name="Child", orchestrationInstance=pb.OrchestrationInstance(instanceId="kid"),
        parentInstance=pb.ParentInstanceInfo(taskScheduledId=5, orchestrationInstance=pb.OrchestrationInstance(
            instanceId="mum")))
    started.orchestrationInstance.executionId.value = "x1"
    started.parentInstance.orchestrationInstance.executionId.value = "p1"
    payload = pb.HistoryEvent(eventId=-1, executionStarted=started).SerializeToString()
    message = encoded("mum:p1:5", "create", "kid", payload)
    outbox = hub.partition(0).outbox
    await redis.rpush(outbox, message, message)  # the same message twice, as after a crash mid-delivery
    r = make_relay(store, hub)
    assert await r._step() > 0  # noqa: SLF001 - one relay round, driven directly
    assert await redis.llen(outbox) == 0
    h = await store.get_instance(hub, "kid")
    assert h["parent_instance_id"] == b"mum" and h["parent_task_id"] == b"5" and h["execution_id"] == b"x1"
    assert (await store.hub_stats(hub)).statuses == {"PENDING": 1}


def terminated(reason: str, recurse: bool = True) -> bytes:
    event = pb.HistoryEvent(eventId=-1, executionTerminated=pb.ExecutionTerminatedEvent(recurse=recurse))
    event.executionTerminated.input.value = reason
    return event.SerializeToString()


async def test_a_terminate_message_ends_a_pending_target_at_once_and_skips_an_unknown_one(store, hub, redis):
    await store.create_instance(hub, new("kid"))
    outbox = hub.partition(0).outbox
    await redis.rpush(outbox, encoded("mum:p1:terminate:kid", "terminate", "kid", terminated('"stop"')),
                      encoded("mum:p1:terminate:ghost", "terminate", "ghost", terminated('"stop"')))
    await make_relay(store, hub)._step()  # noqa: SLF001 - one relay round, driven directly
    assert await redis.llen(outbox) == 0
    h = await store.get_instance(hub, "kid")
    assert (h["status"], h["output"]) == (b"TERMINATED", b'"stop"')
    assert await store.get_instance(hub, "ghost") is None


async def test_terminal_history_is_read_only_for_an_ended_instance(store, hub):
    await store.create_instance(hub, new("job"))
    assert await store.terminal_history(hub, "job") is None  # pending
    assert await store.terminal_history(hub, "nobody") is None
    await store.terminate_instance(hub, "job", terminated("x", recurse=False), None)
    assert await store.terminal_history(hub, "job") == [b"start:job", terminated("x", recurse=False)]


def child_start(child: str, execution: str, parent: str = "mum", task_id: int = 5) -> bytes:
    started = pb.ExecutionStartedEvent(
        name="Child", orchestrationInstance=pb.OrchestrationInstance(instanceId=child),
        parentInstance=pb.ParentInstanceInfo(taskScheduledId=task_id, orchestrationInstance=pb.OrchestrationInstance(
            instanceId=parent)))
    started.orchestrationInstance.executionId.value = execution
    started.parentInstance.orchestrationInstance.executionId.value = f"e-{parent}"  # as store_helpers.new names it
    return pb.HistoryEvent(eventId=-1, executionStarted=started).SerializeToString()


async def deliver(store, hub, redis, *messages: bytes) -> None:
    outbox = hub.partition(0).outbox
    await redis.rpush(outbox, *messages)
    await make_relay(store, hub)._step()  # noqa: SLF001 - one relay round, driven directly
    assert await redis.llen(outbox) == 0


async def test_a_child_replaces_an_ended_instance_of_its_id_but_never_itself(store, hub, redis):
    await store.create_instance(hub, new("kid"))
    await store.terminate_instance(hub, "kid", terminated("x", recurse=False), None)  # an ended instance
    create = encoded("mum:p1:5", "create", "kid", child_start("kid", "x2"))
    await deliver(store, hub, redis, create)
    h = await store.get_instance(hub, "kid")
    assert (h["status"], h["execution_id"], h["parent_instance_id"]) == (b"PENDING", b"x2", b"mum")
    await store.terminate_instance(hub, "kid", terminated("done", recurse=False), None)  # it ran and ended
    await deliver(store, hub, redis, create)  # the same message again (a relay crashed before removing it)
    h = await store.get_instance(hub, "kid")
    assert (h["status"], h["execution_id"]) == (b"TERMINATED", b"x2"), "its own repeat replaced it"


async def test_a_child_whose_id_is_held_by_a_live_instance_fails_the_parents_task(store, hub, redis):
    await store.create_instance(hub, new("mum"))
    await store.create_instance(hub, new("busy"))  # pending: not ended
    await deliver(store, hub, redis, encoded("mum:p1:5", "create", "busy", child_start("busy", "x3")))
    assert (await store.get_instance(hub, "busy"))["execution_id"] == b"e-busy", "left as it was"
    last = pb.HistoryEvent.FromString((await redis.lrange(hub.for_instance("mum").inbox("mum"), -1, -1))[0])
    failed = last.subOrchestrationInstanceFailed
    assert failed.taskScheduledId == 5 and failed.failureDetails.errorType == "InstanceExists"
    assert "busy" in failed.failureDetails.errorMessage
