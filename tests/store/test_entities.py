"""Store entity scripts on every backend: delivery (once, within bounds, delayed), batches under
leases, completion, lock requests passed along a lock set, what waits while an entity is locked,
unlock, release and sweep, clean-up, reads and the entity index."""
from __future__ import annotations

import asyncio

import pytest

from scheduler import protocol
from scheduler.config import Limits
from scheduler.protocol import CALL, LOCK, SIGNAL, UNLOCK, EntityMessage, OutboxMessage
from scheduler.store import Store, keys
from scheduler.store.scripts import Code

LONG = 60_000
SHORT = 1  # ms: a lease that has expired by the time anything looks


def signal(request_id: str, op: str = "add", due_ms: int | None = None) -> EntityMessage:
    return EntityMessage(SIGNAL, request_id, arg="" if due_ms is None else str(due_ms),
                         payload=f"signal:{op}:{request_id}".encode())


def call(request_id: str, parent: str) -> EntityMessage:
    return EntityMessage(CALL, request_id, parent, payload=f"call:{request_id}".encode())


def lock(section: str, parent: str, lock_set: tuple[str, ...], position: int = 0) -> EntityMessage:
    return EntityMessage(LOCK, section, parent, str(position), lock_set, b"granted:" + section.encode())


def unlock(section: str, parent: str) -> EntityMessage:
    return EntityMessage(UNLOCK, section, parent)


def token(hub: keys.HubKeys, entity_id: str) -> str:
    return protocol.claim_token(hub.hub, keys.partition_of(entity_id, hub.partitions), protocol.ENTITY, entity_id)


async def delivered(store: Store, hub, entity_id: str, message: EntityMessage,
                    message_id: str | None = None) -> tuple[Code, bool]:
    return await store.deliver_entity_message(hub, entity_id, message_id or f"m-{message.kind}-{message.id}",
                                              message.encode())


async def deliver(store: Store, hub, entity_id: str, message: EntityMessage, message_id: str | None = None) -> Code:
    return (await delivered(store, hub, entity_id, message, message_id))[0]


async def queued(store: Store, hub, entity_id: str) -> bool:
    pk = hub.for_instance(entity_id)
    return await store.redis.zscore(pk.entities, entity_id) is not None


async def outbox(store: Store, hub, entity_id: str) -> list[OutboxMessage]:
    pk = hub.for_instance(entity_id)
    return [OutboxMessage.decode(m) for m in await store.redis.lrange(pk.outbox, 0, -1)]


async def lists(store: Store, hub, entity_id: str) -> tuple[list[str], list[str]]:
    """(ids of the messages that may run now, ids of those held back)."""
    ek = hub.for_instance(entity_id).entity(entity_id)
    ops = [EntityMessage.decode(m).id for m in await store.redis.lrange(ek.ops, 0, -1)]
    held = [EntityMessage.decode(m).id for m in await store.redis.lrange(ek.held, 0, -1)]
    return ops, held


async def all_ids(store: Store, hub, prefix: str) -> list[str]:
    return [i for p in range(hub.partitions) for i in await store.entity_ids(hub, p, prefix, None, 100)]


async def test_signals_queue_the_entity_once_and_a_batch_takes_them_in_order(store, hub):
    e = "@counter@a"
    assert await deliver(store, hub, e, signal("r1")) is Code.OK
    assert await deliver(store, hub, e, signal("r2")) is Code.OK
    assert await deliver(store, hub, e, signal("r1")) is Code.DONE_BEFORE  # same message id
    assert await queued(store, hub, e)
    record = await store.get_entity(hub, e)
    assert record is not None and record.state is None and record.backlog == 2 and record.locked_by is None

    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert claim is not None and claim.state is None
    assert [EntityMessage.decode(m).id for m in claim.messages] == ["r1", "r2"]
    assert not await queued(store, hub, e)
    assert await store.claim_entity(hub, e, token(hub, e), LONG) is None  # one batch at a time
    await deliver(store, hub, e, signal("r3"))
    assert not await queued(store, hub, e)  # a batch is out: the completion queues it again

    await store.complete_entity(hub, e, claim.token, 2, "5", [])
    record = await store.get_entity(hub, e)
    assert record.state == "5" and record.backlog == 1
    assert await queued(store, hub, e)
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert claim.state == b"5" and [EntityMessage.decode(m).id for m in claim.messages] == ["r3"]


async def test_only_the_message_that_makes_the_entity_ready_says_so(store, hub):
    e = "@counter@ready"
    assert await delivered(store, hub, e, signal("r1")) == (Code.OK, True)  # queued now: worth an offer
    assert await delivered(store, hub, e, signal("r2")) == (Code.OK, False)  # queued already
    assert await delivered(store, hub, e, signal("r1")) == (Code.DONE_BEFORE, False)
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert await delivered(store, hub, e, signal("r3")) == (Code.OK, False)  # its batch is out
    await store.complete_entity(hub, e, claim.token, 2, "2", [])  # queues it again for r3
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    await store.complete_entity(hub, e, claim.token, 1, "3", [])
    assert not await queued(store, hub, e)
    far = (await store.server_time_ms()) + LONG
    assert await delivered(store, hub, e, signal("later", due_ms=far)) == (Code.OK, False)  # waits for its time
    assert await delivered(store, hub, e, signal("r4")) == (Code.OK, True)


async def test_a_partial_result_leaves_the_rest_first_in_line_and_a_stale_token_changes_nothing(store, hub):
    e = "@counter@b"
    for i in range(3):
        await deliver(store, hub, e, signal(f"r{i}"))
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    from scheduler import errors
    with pytest.raises(errors.LeaseLost):
        await store.complete_entity(hub, e, token(hub, e), 3, "x", [])
    await store.complete_entity(hub, e, claim.token, 1, "1", [])
    assert (await lists(store, hub, e))[0] == ["r1", "r2"]
    with pytest.raises(errors.LeaseLost):  # applied once
        await store.complete_entity(hub, e, claim.token, 1, "2", [])
    assert (await store.get_entity(hub, e)).state == "1"


async def test_state_is_left_or_deleted_as_asked(store, hub):
    e = "@counter@c"
    await deliver(store, hub, e, signal("r1"))
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    await store.complete_entity(hub, e, claim.token, 1, "7", [])
    await deliver(store, hub, e, signal("r2"))
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    await store.complete_entity(hub, e, claim.token, 1, False, [])
    assert (await store.get_entity(hub, e)).state == "7"
    await deliver(store, hub, e, signal("r3"))
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    await store.complete_entity(hub, e, claim.token, 1, None, [b"m1\nevent\norch\npayload"])
    record = await store.get_entity(hub, e)
    assert record is not None and record.state is None  # deleted state: the entity stays until cleaned
    assert [m.message_id for m in await outbox(store, hub, e)] == ["m1"]


async def test_a_lock_request_goes_along_the_lock_set_and_then_grants(store, hub):
    a, b = "@acct@a", "@acct@b"
    await deliver(store, hub, a, lock("cs1", "orch-1", (a, b)))
    assert (await store.entity_locks(hub, [a]))[0] == ("orch-1", "cs1")
    [forward] = await outbox(store, hub, a)
    assert forward.kind == "entity" and forward.target == b and forward.message_id == "cs1:1"
    assert EntityMessage.decode(forward.payload) == lock("cs1", "orch-1", (a, b), 1)

    await deliver(store, hub, b, EntityMessage.decode(forward.payload), forward.message_id)
    assert (await store.entity_locks(hub, [b]))[0] == ("orch-1", "cs1")
    grant = (await outbox(store, hub, b))[-1]
    assert (grant.kind, grant.target, grant.payload, grant.message_id) == ("event", "orch-1", b"granted:cs1",
                                                                           "cs1:granted")


async def test_a_locked_entity_runs_only_its_holders_calls_and_the_rest_waits_in_order(store, hub):
    e = "@acct@c"
    await deliver(store, hub, e, signal("before"))
    await deliver(store, hub, e, lock("cs1", "orch-1", (e,)))
    await deliver(store, hub, e, signal("after-lock"))
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert [EntityMessage.decode(m).id for m in claim.messages] == ["before"]  # up to the lock request
    await store.complete_entity(hub, e, claim.token, 1, "1", [])
    assert (await store.entity_locks(hub, [e]))[0] == ("orch-1", "cs1")
    assert await lists(store, hub, e) == ([], ["after-lock"])
    assert not await queued(store, hub, e)

    await deliver(store, hub, e, call("other-call", "orch-2"))
    await deliver(store, hub, e, call("holder-call", "orch-1"))
    await deliver(store, hub, e, lock("cs2", "orch-2", (e,)))
    assert await lists(store, hub, e) == (["holder-call"], ["after-lock", "other-call", "cs2"])
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert [EntityMessage.decode(m).id for m in claim.messages] == ["holder-call"]
    await deliver(store, hub, e, unlock("cs-stale", "orch-1"))  # not this section's: waits, then dropped
    await deliver(store, hub, e, unlock("cs1", "orch-1"))
    await store.complete_entity(hub, e, claim.token, 1, "2", [])
    # unlocked: what waited runs in order, up to the next lock request, which runs when it is first
    assert (await store.entity_locks(hub, [e]))[0] == (None, None)
    assert await lists(store, hub, e) == (["after-lock", "other-call", "cs2", "cs-stale"], [])
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert [EntityMessage.decode(m).id for m in claim.messages] == ["after-lock", "other-call"]
    await store.complete_entity(hub, e, claim.token, 2, "3", [])
    assert (await store.entity_locks(hub, [e]))[0] == ("orch-2", "cs2")
    assert await lists(store, hub, e) == ([], ["cs-stale"])


async def test_operations_are_refused_past_the_bounds_but_locks_and_unlocks_never(make_store, hub_name):
    store = make_store()
    store.limits = Limits(max_inbox_events=2, max_work_item_bytes=10_000)
    hub = await store.ensure_hub(hub_name)
    e = "@counter@d"
    assert await deliver(store, hub, e, signal("r1")) is Code.OK
    assert await deliver(store, hub, e, signal("r2")) is Code.OK
    assert await deliver(store, hub, e, signal("r3")) is Code.INBOX_FULL
    assert await deliver(store, hub, e, lock("cs", "o", (e,))) is Code.OK
    assert await deliver(store, hub, e, unlock("cs", "o")) is Code.OK
    big = EntityMessage(SIGNAL, "big", payload=b"x" * 20_000)
    assert await deliver(store, hub, "@counter@e", big) is Code.TOO_LARGE
    assert await store.get_entity(hub, "@counter@e") is None  # nothing written


async def test_a_delayed_signal_waits_on_the_due_set_and_joins_the_queue_at_its_time(store, hub):
    e = "@counter@f"
    now = await store.server_time_ms()
    due = now + 300
    await deliver(store, hub, e, signal("later", due_ms=due))
    pk = hub.for_instance(e)
    assert await store.redis.zscore(pk.due, e) == due
    assert not await queued(store, hub, e)
    assert (await store.get_entity(hub, e)).backlog == 0
    promotion = await store.promote_due(hub, 100)
    assert promotion.promoted_due_ms == []  # not yet
    while await store.server_time_ms() < due:
        await asyncio.sleep(0.02)
    promotion = await store.promote_due(hub, 100)
    assert promotion.promoted_due_ms == [due] and await queued(store, hub, e)
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert [EntityMessage.decode(m).id for m in claim.messages] == ["later"]


async def test_a_released_or_expired_batch_is_handed_out_again(store, hub):
    e = "@counter@g"
    await deliver(store, hub, e, signal("r1"))
    claim = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert not await store.release_entity(hub, e, token(hub, e))
    assert await store.release_entity(hub, e, claim.token)
    claim = await store.claim_entity(hub, e, token(hub, e), SHORT)
    await asyncio.sleep(0.01)
    assert await store.renew_entity_leases(hub, keys.partition_of(e, hub.partitions), [(e, "other")], LONG) == []
    assert await store.sweep_entity_lease(hub, e)
    again = await store.claim_entity(hub, e, token(hub, e), LONG)
    assert again is not None and [EntityMessage.decode(m).id for m in again.messages] == ["r1"]
    from scheduler import errors
    with pytest.raises(errors.LeaseLost):
        await store.complete_entity(hub, e, claim.token, 1, "late", [])
    p = keys.partition_of(e, hub.partitions)
    assert await store.renew_entity_leases(hub, p, [(e, again.token)], LONG) == [e]


async def test_clean_releases_an_orphaned_lock_and_removes_empty_entities(store, hub):
    e, empty = "@acct@h", "@acct@i"
    await deliver(store, hub, e, lock("cs1", "gone", (e,)))
    await deliver(store, hub, e, signal("waiting"))
    await deliver(store, hub, empty, signal("r1"))
    claim = await store.claim_entity(hub, empty, token(hub, empty), LONG)
    await store.complete_entity(hub, empty, claim.token, 1, None, [])
    assert await store.clean_entity(hub, e, "cs-other", True) == (False, False)
    assert await store.clean_entity(hub, e, "cs1", True) == (False, True)
    assert await lists(store, hub, e) == (["waiting"], []) and await queued(store, hub, e)
    assert await store.clean_entity(hub, empty, None, True) == (True, False)
    assert await store.get_entity(hub, empty) is None
    assert empty not in await all_ids(store, hub, "")


async def test_entity_ids_page_by_prefix_in_byte_order(store, hub):
    ids = ["@a@1", "@a@2", "@a@é", "@b@1", "@ab@1"]
    for e in ids:
        await deliver(store, hub, e, signal("r-" + e))
    assert sorted(await all_ids(store, hub, "@a@")) == sorted(["@a@1", "@a@2", "@a@é"])
    assert sorted(await all_ids(store, hub, "")) == sorted(ids)
    p = keys.partition_of("@a@2", hub.partitions)
    after = await store.entity_ids(hub, p, "@a@", "@a@1", 100)
    assert "@a@1" not in after and "@a@2" in after
