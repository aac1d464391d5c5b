"""A completion that arrives after its work item was handed back (its stream closed, its lease swept) is
applied while no other claim has taken the item: exactly once, never lost. For each kind of work item
(orchestration episodes, activities, entity batches): applied under the old token, the item leaves the
queue it went back to; once another claim took the item, the old token is refused and nothing changes.
An Abandon (the worker gives up) ends the token at once."""
from __future__ import annotations

import pytest

from scheduler import errors, protocol
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.engine import events as make
from scheduler.protocol import SIGNAL, EntityMessage
from scheduler.store import Store, keys

from store_helpers import eventually, new

LONG = 60_000
EPISODE = b"orchestrator-started"


def token_for(hub: keys.HubKeys, kind: str, item: str) -> str:
    return protocol.claim_token(hub.hub, keys.partition_of(protocol.instance_of(item), hub.partitions), kind, item)


async def claim(store: Store, hub, iid: str, lease_ms: int = LONG):
    return await store.claim_orchestration(hub, iid, token_for(hub, protocol.ORCHESTRATION, iid), lease_ms, EPISODE)


async def snapshot(redis, prefix: str) -> dict[str, bytes]:
    return {k.decode(): await redis.dump(k) async for k in redis.scan_iter(match=prefix + ":*", count=1000)}


async def wait_past(store: Store, ms: int) -> None:
    """Poll Redis time until it is past ``ms``."""
    async def passed() -> bool:
        return await store.server_time_ms() > ms
    await eventually(passed)


# -- orchestration episodes ----------------------------------------------------------------------


async def test_an_episode_handed_back_is_completed_late_exactly_once(store: Store, hub, redis):
    pk = hub.for_instance("late")
    await store.create_instance(hub, new("late"))
    first = await claim(store, hub, "late")
    assert await store.release_orchestration(hub, "late", first.token, keep_token=True)
    assert await redis.zscore(pk.ready, "late") is not None  # another worker may take it
    assert await redis.zscore(pk.leases, keys.lease_member(protocol.ORCHESTRATION, "late")) is None
    raised = make.event_raised("Meanwhile", "1")
    await store.raise_event(hub, "late", raised)  # after the episode's events: for the next episode

    done = make.history_event(1, timerCreated=pb.TimerCreatedEvent())
    await store.complete_orchestration(hub, "late", first.token, [done])
    # the worker's episode went in with the events it was handed; the event of meanwhile waits
    assert await redis.lrange(pk.history("late"), 0, -1) == [EPISODE, b"start:late", done]
    assert await redis.lrange(pk.inbox("late"), 0, -1) == [raised]
    assert await redis.zscore(pk.ready, "late") is not None  # once, for the event
    with pytest.raises(errors.LeaseLost):  # exactly once
        await store.complete_orchestration(hub, "late", first.token, [done])
    second = await claim(store, hub, "late")
    assert second.new_events == [raised]


async def test_an_episode_handed_back_and_completed_late_leaves_the_ready_set(store: Store, hub, redis):
    pk = hub.for_instance("off")
    await store.create_instance(hub, new("off"))
    first = await claim(store, hub, "off")
    assert await store.release_orchestration(hub, "off", first.token, keep_token=True)
    await store.complete_orchestration(hub, "off", first.token, [])
    assert await redis.zscore(pk.ready, "off") is None  # nothing is left to run: not handed out again
    assert await redis.zcard(pk.leases) == 0
    assert not {b"lease", b"claimed_n", b"episode_start"} & set(await redis.hkeys(pk.instance("off")))
    assert await claim(store, hub, "off") is None


async def test_a_due_timer_keeps_an_instance_completed_late_ready(store: Store, hub, redis):
    pk = hub.for_instance("timer")
    await store.create_instance(hub, new("timer"))
    first = await claim(store, hub, "timer")
    fired = make.history_event(-1, timerFired=pb.TimerFiredEvent(timerId=1))
    await redis.zadd(pk.timers("timer"), {fired: 1})  # a timer of the episode before, due long ago
    assert await store.release_orchestration(hub, "timer", first.token, keep_token=True)
    await store.complete_orchestration(hub, "timer", first.token, [])
    assert await redis.zscore(pk.ready, "timer") is not None
    assert (await claim(store, hub, "timer")).new_events == [fired]


async def test_an_episode_taken_by_another_claim_refuses_the_old_token(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("taken"))
    first = await claim(store, hub, "taken")
    assert await store.release_orchestration(hub, "taken", first.token, keep_token=True)
    second = await claim(store, hub, "taken")
    assert second is not None
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.LeaseLost):
        await store.complete_orchestration(hub, "taken", first.token, [])
    with pytest.raises(errors.LeaseLost):
        await store.continue_as_new(hub, "taken", first.token, "e-2", [b"start-2"], None, [])
    assert not await store.release_orchestration(hub, "taken", first.token, keep_token=True)
    assert await snapshot(redis, key_prefix) == before
    await store.complete_orchestration(hub, "taken", second.token, [], status="COMPLETED")


async def test_an_episode_swept_is_completed_late_until_taken(store: Store, hub, redis):
    pk = hub.for_instance("swept")
    await store.create_instance(hub, new("swept"))
    first = await claim(store, hub, "swept", 20)
    await wait_past(store, first.lease_expiry_ms)
    assert await store.sweep_orchestration_lease(hub, "swept")
    assert await store.renew_orchestration_leases(hub, keys.partition_of("swept", hub.partitions),
                                                  [("swept", first.token)], LONG) == []  # no lease to renew
    await store.complete_orchestration(hub, "swept", first.token, [], status="COMPLETED")
    assert (await redis.hget(pk.instance("swept"), "status")) == b"COMPLETED"
    assert await redis.zscore(pk.ready, "swept") is None


async def test_an_abandoned_episode_refuses_its_token(store: Store, hub, redis):
    await store.create_instance(hub, new("gave-up"))
    first = await claim(store, hub, "gave-up")
    assert await store.release_orchestration(hub, "gave-up", first.token)  # Abandon
    with pytest.raises(errors.LeaseLost):
        await store.complete_orchestration(hub, "gave-up", first.token, [])


# -- activities ----------------------------------------------------------------------------------


async def scheduled_activity(store: Store, hub, iid: str) -> str:
    """Create ``iid`` and complete its first episode, which schedules one activity; its item."""
    await store.create_instance(hub, new(iid))
    running = await claim(store, hub, iid)
    item = protocol.activity_item(iid, running.fields["execution_id"].decode(), 0)
    await store.complete_orchestration(hub, iid, running.token,
                                       [make.history_event(0, taskScheduled=pb.TaskScheduledEvent(name="A"))],
                                       activities=[(item, b"request")])
    return item


def result(value: str) -> bytes:
    return make.history_event(taskCompleted=pb.TaskCompletedEvent(taskScheduledId=0, result=make.text(value)))


async def test_an_activity_handed_back_is_completed_late_exactly_once(store: Store, hub, redis):
    item = await scheduled_activity(store, hub, "act")
    pk = hub.for_instance("act")
    token = token_for(hub, protocol.ACTIVITY, item)
    assert await store.claim_activity(hub, item, token, LONG) == b"request"
    assert await store.release_activity(hub, item, token, keep_token=True)
    assert await redis.zscore(pk.activities, item) is not None
    assert await store.renew_activity_leases(hub, keys.partition_of("act", hub.partitions), [(item, token)],
                                             LONG) == []  # handed back: no lease to renew
    late = result("late")
    assert await store.complete_activity(hub, item, token, late)
    assert await redis.zscore(pk.activities, item) is None  # not run again
    assert await redis.lrange(pk.inbox("act"), 0, -1) == [late]
    assert not await redis.exists(pk.activity_tokens) and not await redis.exists(pk.activity_payloads)
    with pytest.raises(errors.LeaseLost):  # exactly once
        await store.complete_activity(hub, item, token, result("again"))
    assert await store.claim_activity(hub, item, token_for(hub, protocol.ACTIVITY, item), LONG) is None


async def test_an_activity_taken_by_another_claim_refuses_the_old_token(store: Store, hub, redis, key_prefix):
    item = await scheduled_activity(store, hub, "act2")
    old, new_token = token_for(hub, protocol.ACTIVITY, item), token_for(hub, protocol.ACTIVITY, item)
    await store.claim_activity(hub, item, old, LONG)
    assert await store.release_activity(hub, item, old, keep_token=True)
    assert await store.claim_activity(hub, item, new_token, LONG) == b"request"
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.LeaseLost):
        await store.complete_activity(hub, item, old, result("late"))
    assert not await store.release_activity(hub, item, old, keep_token=True)
    assert await snapshot(redis, key_prefix) == before
    assert await store.complete_activity(hub, item, new_token, result("new"))


async def test_an_activity_swept_is_completed_late_and_an_abandoned_one_is_not(store: Store, hub, redis):
    item = await scheduled_activity(store, hub, "act3")
    pk = hub.for_instance("act3")
    token = token_for(hub, protocol.ACTIVITY, item)
    await store.claim_activity(hub, item, token, 20)
    await wait_past(store, int(await redis.zscore(pk.leases, keys.lease_member(protocol.ACTIVITY, item))))
    assert await store.sweep_activity_lease(hub, item)
    assert await store.complete_activity(hub, item, token, result("late"))
    assert await redis.zscore(pk.activities, item) is None

    item = await scheduled_activity(store, hub, "act4")
    token = token_for(hub, protocol.ACTIVITY, item)
    await store.claim_activity(hub, item, token, LONG)
    assert await store.release_activity(hub, item, token)  # Abandon
    with pytest.raises(errors.LeaseLost):
        await store.complete_activity(hub, item, token, result("late"))


# -- entity batches ------------------------------------------------------------------------------


def signal(request_id: str, due_ms: int | None = None) -> EntityMessage:
    return EntityMessage(SIGNAL, request_id, arg="" if due_ms is None else str(due_ms),
                         payload=f"signal:{request_id}".encode())


async def signalled(store: Store, hub, entity_id: str, *messages: EntityMessage) -> None:
    for message in messages:
        await store.deliver_entity_message(hub, entity_id, "m-" + message.id, message.encode())


async def test_an_entity_batch_handed_back_is_completed_late_exactly_once(store: Store, hub, redis):
    e = "@counter@late"
    ek, pk = hub.for_instance(e).entity(e), hub.for_instance(e)
    await signalled(store, hub, e, signal("r1"), signal("r2"))
    token = token_for(hub, protocol.ENTITY, e)
    batch = await store.claim_entity(hub, e, token, LONG)
    assert len(batch.messages) == 2
    assert await store.release_entity(hub, e, token, keep_token=True)
    assert await redis.zscore(pk.entities, e) is not None
    assert (await store.get_entity(hub, e)).backlog == 2  # no batch out: both wait
    await signalled(store, hub, e, signal("r3"))  # after the batch: for the next one
    assert await store.claimed_messages(hub, e, token) == batch.messages

    await store.complete_entity(hub, e, token, 2, "2", [])
    assert (await store.get_entity(hub, e)).state == "2"
    assert [EntityMessage.decode(m).id for m in await redis.lrange(ek.ops, 0, -1)] == ["r3"]
    assert await redis.zscore(pk.entities, e) is not None  # once, for r3
    with pytest.raises(errors.LeaseLost):  # exactly once
        await store.complete_entity(hub, e, token, 1, "3", [])
    nxt = await store.claim_entity(hub, e, token_for(hub, protocol.ENTITY, e), LONG)
    assert [EntityMessage.decode(m).id for m in nxt.messages] == ["r3"]


async def test_an_entity_batch_completed_late_leaves_the_queue_and_keeps_due_signals(store: Store, hub, redis):
    e, d = "@counter@off", "@counter@due"
    await signalled(store, hub, e, signal("r1"))
    token = token_for(hub, protocol.ENTITY, e)
    await store.claim_entity(hub, e, token, LONG)
    assert await store.release_entity(hub, e, token, keep_token=True)
    await store.complete_entity(hub, e, token, 1, "1", [])
    pk = hub.for_instance(e)
    assert await redis.zscore(pk.entities, e) is None and await redis.zcard(pk.leases) == 0
    assert await store.claim_entity(hub, e, token_for(hub, protocol.ENTITY, d), LONG) is None

    now = await store.server_time_ms()
    await signalled(store, hub, d, signal("r1"), signal("later", now + 30))
    token = token_for(hub, protocol.ENTITY, d)
    await store.claim_entity(hub, d, token, LONG)
    assert await store.release_entity(hub, d, token, keep_token=True)
    await wait_past(store, now + 30)  # the delayed signal's time comes while the batch is handed back
    pk = hub.for_instance(d)
    await redis.zrem(pk.due, d)  # as the promoter does (it finds the entity queued already)
    await store.complete_entity(hub, d, token, 1, "1", [])
    assert await redis.zscore(pk.entities, d) is not None  # for the delayed signal: not lost
    nxt = await store.claim_entity(hub, d, token_for(hub, protocol.ENTITY, d), LONG)
    assert [EntityMessage.decode(m).id for m in nxt.messages] == ["later"]


async def test_an_entity_batch_taken_by_another_claim_refuses_the_old_token(store: Store, hub, redis, key_prefix):
    e = "@counter@taken"
    await signalled(store, hub, e, signal("r1"))
    old, new_token = token_for(hub, protocol.ENTITY, e), token_for(hub, protocol.ENTITY, e)
    await store.claim_entity(hub, e, old, LONG)
    assert await store.release_entity(hub, e, old, keep_token=True)
    assert await store.claim_entity(hub, e, new_token, LONG) is not None
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.LeaseLost):
        await store.complete_entity(hub, e, old, 1, "late", [])
    assert await store.claimed_messages(hub, e, old) is None
    assert not await store.release_entity(hub, e, old, keep_token=True)
    assert await snapshot(redis, key_prefix) == before


async def test_an_entity_batch_swept_is_completed_late_and_an_abandoned_one_is_not(store: Store, hub, redis):
    e = "@counter@swept"
    await signalled(store, hub, e, signal("r1"))
    token = token_for(hub, protocol.ENTITY, e)
    batch = await store.claim_entity(hub, e, token, 20)
    await wait_past(store, batch.lease_expiry_ms)
    assert await store.sweep_entity_lease(hub, e)
    await store.complete_entity(hub, e, token, 1, "1", [])
    assert (await store.get_entity(hub, e)).state == "1"
    assert await redis.zscore(hub.for_instance(e).entities, e) is None

    await signalled(store, hub, e, signal("r2"))
    token = token_for(hub, protocol.ENTITY, e)
    await store.claim_entity(hub, e, token, LONG)
    assert await store.release_entity(hub, e, token)  # Abandon
    with pytest.raises(errors.LeaseLost):
        await store.complete_entity(hub, e, token, 1, "2", [])
