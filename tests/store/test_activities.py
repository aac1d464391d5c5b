"""Store activity scripts end to end: queue (by an episode's completion), claim, renew, release,
sweep and complete activity work items; exact Redis contents."""
from __future__ import annotations

import asyncio

import pytest

from scheduler import errors, protocol
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.engine import events as make
from scheduler.store import keys
from scheduler.store import Store
from scheduler.store.activities import DEFAULT_OVERFLOW

from store_helpers import ids_in_distinct_partitions, new
from test_completion import during
from test_dispatch import (EPISODE, LONG, SHORT, assert_stats_right, claim, claim_token, fields, ids_in_partition,
                           lease_member, snapshot, stats_of, wait_past)


def partition(hub: keys.HubKeys, item: str) -> int:
    return keys.partition_of(protocol.instance_of(item), hub.partitions)


def act_token(hub: keys.HubKeys, item: str) -> str:
    return protocol.claim_token(hub.hub, partition(hub, item), protocol.ACTIVITY, item)


def act_member(item: str) -> str:
    return keys.lease_member(protocol.ACTIVITY, item)


def request(item: str) -> bytes:
    return b"request:" + item.encode()


def task_completed(task_id: int, result: str) -> bytes:
    return make.history_event(taskCompleted=pb.TaskCompletedEvent(taskScheduledId=task_id, result=make.text(result)))


async def schedule(store: Store, hub, iid: str, count: int = 1) -> list[str]:
    """Create ``iid`` and run its first episode, which schedules ``count`` activities; their items."""
    await store.create_instance(hub, new(iid))
    running = await claim(store, hub, iid)
    assert running is not None
    execution_id = running.fields["execution_id"].decode()
    items = [protocol.activity_item(iid, execution_id, task) for task in range(count)]
    scheduled = [make.history_event(task, taskScheduled=pb.TaskScheduledEvent(name="Act")) for task in range(count)]
    await store.complete_orchestration(hub, iid, running.token, scheduled,
                                       activities=[(item, request(item)) for item in items])
    return items


async def claim_act(store: Store, hub, item: str, lease_ms: int = LONG) -> tuple[str, bytes | None]:
    token = act_token(hub, item)
    return token, await store.claim_activity(hub, item, token, lease_ms)


async def queued_items(store: Store, hub, p: int) -> list[str]:
    return await store.queued(hub, protocol.ACTIVITY, p, 100)


# -- claim -------------------------------------------------------------------------------------


async def test_claim_hands_out_the_payload_and_leases_the_item(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        p = keys.partition_of(iid, hub.partitions)
        [item] = await schedule(store, hub, iid)
        assert await queued_items(store, hub, p) == [item]
        token = act_token(hub, item)
        t0 = await store.server_time_ms()
        payload = await store.claim_activity(hub, item, token, LONG)
        t1 = await store.server_time_ms()
        assert payload == request(item)
        assert await queued_items(store, hub, p) == []
        assert t0 + LONG <= await redis.zscore(pk.leases, act_member(item)) <= t1 + LONG
        assert await redis.hgetall(pk.activity_tokens) == {item.encode(): token.encode()}
        assert await redis.hgetall(pk.activity_payloads) == {item.encode(): request(item)}  # kept until completed
        before = await snapshot(redis, key_prefix)
        assert await store.claim_activity(hub, item, act_token(hub, item), LONG) is None  # a second claim
        assert await snapshot(redis, key_prefix) == before
    await assert_stats_right(redis, hub, key_prefix)


async def test_a_completion_may_claim_its_activities_for_the_callers_stream_at_once(store: Store, hub, redis,
                                                                                     key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        p = keys.partition_of(iid, hub.partitions)
        await store.create_instance(hub, new(iid))
        running = await claim(store, hub, iid)
        execution_id = running.fields["execution_id"].decode()
        items = [protocol.activity_item(iid, execution_id, task) for task in range(2)]
        tokens = [act_token(hub, item) for item in items]
        scheduled = [make.history_event(task, taskScheduled=pb.TaskScheduledEvent(name="Act")) for task in range(2)]
        t0 = await store.server_time_ms()
        messages, completion = await during(redis, store.channel, pk.activities, lambda: store.complete_orchestration(
            hub, iid, running.token, scheduled, activities=[(item, request(item)) for item in items],
            timers=[(t0 + LONG, b"timer")], claim_activities=(LONG, tokens)))
        t1 = await store.server_time_ms()
        assert completion.readied is False
        assert not [m for m in messages if " work " in m]  # claimed, not queued: no stream is woken
        assert await queued_items(store, hub, p) == []
        for item, token in zip(items, tokens):
            assert t0 + LONG <= await redis.zscore(pk.leases, act_member(item)) <= t1 + LONG
            assert await redis.hget(pk.activity_tokens, item) == token.encode()
            assert await redis.hget(pk.activity_payloads, item) == request(item)
        assert await redis.zrange(pk.timers(iid), 0, -1) == [b"timer"]  # what follows the tokens is read right
        assert len(await redis.lrange(pk.history(iid), 0, -1)) == 2 + len(scheduled)
        # claimed as claim_activity would have: the claim's token completes it, another is refused
        with pytest.raises(errors.LeaseLost):
            await store.complete_activity(hub, items[0], act_token(hub, items[0]), task_completed(0, "x"))
        assert await store.complete_activity(hub, items[0], tokens[0], task_completed(0, "x"))
        assert await store.release_activity(hub, items[1], tokens[1])
        assert await queued_items(store, hub, p) == [items[1]]
    await assert_stats_right(redis, hub, key_prefix)


async def test_a_claim_needs_a_token_for_each_activity(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("t"))
    running = await claim(store, hub, "t")
    item = protocol.activity_item("t", running.fields["execution_id"].decode(), 0)
    before = await snapshot(redis, key_prefix)
    with pytest.raises(ValueError):
        await store.complete_orchestration(hub, "t", running.token, [], activities=[(item, request(item))],
                                           claim_activities=(LONG, []))
    assert await snapshot(redis, key_prefix) == before


async def test_claim_of_an_unknown_item_changes_nothing(store: Store, hub, redis, key_prefix):
    [item] = await schedule(store, hub, "u")
    before = await snapshot(redis, key_prefix)
    for other in (protocol.activity_item("u", "e-u", 99), protocol.activity_item("nobody", "e", 0)):
        assert await store.claim_activity(hub, other, act_token(hub, other), LONG) is None
    assert await snapshot(redis, key_prefix) == before


async def test_claim_of_a_queued_item_without_payload_only_dequeues_it(store: Store, hub, redis):
    item = protocol.activity_item("stray", "e-stray", 0)
    pk = hub.for_instance("stray")
    await redis.zadd(pk.activities, {item: 1})
    assert await store.claim_activity(hub, item, act_token(hub, item), LONG) is None
    assert await redis.zcard(pk.activities) == 0
    assert await redis.zcard(pk.leases) == 0 and not await redis.exists(pk.activity_tokens)


async def test_concurrent_claims_by_four_replicas_claim_each_item_once(make_store, hub_name):
    stores = [make_store() for _ in range(4)]
    hubs = [await s.ensure_hub(hub_name) for s in stores]
    await stores[0].load_scripts()
    items = []
    for iid in ids_in_distinct_partitions(hubs[0]):
        items += await schedule(stores[0], hubs[0], iid, count=10)

    async def replica(store: Store, hub) -> list[tuple[str, str, bytes]]:
        tokens = {item: act_token(hub, item) for item in items}
        got = await asyncio.gather(*(store.claim_activity(hub, item, tokens[item], LONG) for item in items))
        return [(item, tokens[item], payload) for item, payload in zip(items, got) if payload is not None]

    results = await asyncio.gather(*(replica(s, h) for s, h in zip(stores, hubs)))
    claimed = [c for r in results for c in r]
    assert sorted(item for item, _, _ in claimed) == sorted(items)
    redis, hub = stores[0].redis, hubs[0]
    for item, token, payload in claimed:
        pk = hub.for_instance(protocol.instance_of(item))
        assert payload == request(item)
        assert await redis.hget(pk.activity_tokens, item) == token.encode()
        assert await redis.zscore(pk.leases, act_member(item)) is not None
    assert sum([await redis.zcard(pk.activities) for pk in hub.all_partitions()]) == 0


# -- renew -------------------------------------------------------------------------------------


async def test_renew_extends_only_leases_whose_token_is_current(store: Store, hub, redis, key_prefix):
    [iid] = ids_in_partition(hub, 1, 1)
    a, b, c = await schedule(store, hub, iid, count=3)
    pk = hub.partition(1)
    ta, _ = await claim_act(store, hub, a, 10_000)
    tb, _ = await claim_act(store, hub, b, 10_000)
    b_expiry = await redis.zscore(pk.leases, act_member(b))
    t0 = await store.server_time_ms()
    renewed = await store.renew_activity_leases(hub, 1, [(a, ta), (b, tb + "-stale"), (c, act_token(hub, c))], LONG)
    t1 = await store.server_time_ms()
    assert renewed == [a]
    assert t0 + LONG <= await redis.zscore(pk.leases, act_member(a)) <= t1 + LONG
    assert await redis.zscore(pk.leases, act_member(b)) == b_expiry
    assert await redis.zscore(pk.leases, act_member(c)) is None  # not claimed: no lease made
    assert await redis.hget(pk.activity_tokens, c) is None
    assert await store.renew_activity_leases(hub, 1, [], LONG) == []
    assert await store.release_activity(hub, a, ta)
    before = await snapshot(redis, key_prefix)
    assert await store.renew_activity_leases(hub, 1, [(a, ta)], LONG) == []  # released: stale
    assert await snapshot(redis, key_prefix) == before


# -- release -----------------------------------------------------------------------------------


async def test_release_with_the_current_token_requeues_and_wakes(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        p = keys.partition_of(iid, hub.partitions)
        [item] = await schedule(store, hub, iid)
        token, _ = await claim_act(store, hub, item)
        assert await redis.zcard(pk.activities) == 0
        t0 = await store.server_time_ms()
        messages, released = await during(redis, store.channel, pk.activities,
                                          lambda: store.release_activity(hub, item, token))
        t1 = await store.server_time_ms()
        assert released and messages == [f"{hub.hub} work {pk.activities}"]
        assert t0 <= await redis.zscore(pk.activities, item) <= t1
        assert await queued_items(store, hub, p) == [item]
        assert await redis.zscore(pk.leases, act_member(item)) is None
        assert await redis.hget(pk.activity_tokens, item) is None
        assert await redis.hget(pk.activity_payloads, item) == request(item)
        assert not await store.release_activity(hub, item, token)  # a second release: stale
        again, payload = await claim_act(store, hub, item)
        assert payload == request(item) and await redis.hget(pk.activity_tokens, item) == again.encode()
    await assert_stats_right(redis, hub, key_prefix)


async def test_release_to_a_queue_that_is_not_empty_keeps_order_and_does_not_wake(store: Store, hub, redis):
    [iid] = ids_in_partition(hub, 2, 1)
    pk = hub.partition(2)
    a, b = await schedule(store, hub, iid, count=2)
    b_since = await redis.zscore(pk.activities, b)
    token, _ = await claim_act(store, hub, a)
    await wait_past(store, int(b_since))  # released later than b was queued: behind it
    messages, released = await during(redis, store.channel, pk.activities,
                                      lambda: store.release_activity(hub, a, token))
    assert released and messages == []
    assert await redis.zscore(pk.activities, b) == b_since
    assert await queued_items(store, hub, 2) == [b, a]


async def test_release_to_a_queue_whose_head_has_waited_long_wakes(store: Store, hub, redis):
    """Work no stream takes (say, for its filters) waits at the head: a new item wakes the streams all the same."""
    [iid] = ids_in_partition(hub, 2, 1)
    pk = hub.partition(2)
    [a] = await schedule(store, hub, iid)
    token, _ = await claim_act(store, hub, a)
    await redis.zadd(pk.activities, {"nobody-takes-this": 1})  # queued long ago
    messages, released = await during(redis, store.channel, pk.activities,
                                      lambda: store.release_activity(hub, a, token))
    assert released and messages == [f"{hub.hub} work {pk.activities}"]


async def test_release_with_a_stale_token_changes_nothing(store: Store, hub, redis, key_prefix):
    claimed, waiting = await schedule(store, hub, "s", count=2)
    await claim_act(store, hub, claimed)
    before = await snapshot(redis, key_prefix)

    async def attempts() -> None:
        assert not await store.release_activity(hub, claimed, "not-the-token")
        assert not await store.release_activity(hub, claimed, "")
        assert not await store.release_activity(hub, waiting, act_token(hub, waiting))  # queued, not claimed
        assert not await store.release_activity(hub, protocol.activity_item("s", "e-s", 7), "any")

    messages, _ = await during(redis, store.channel, hub.for_instance("s").activities, attempts)
    assert messages == []
    assert await snapshot(redis, key_prefix) == before


# -- sweep -------------------------------------------------------------------------------------


async def test_sweep_requeues_expired_leases_only_and_wakes(store: Store, hub, redis, make_store, key_prefix):
    [iid] = ids_in_partition(hub, 3, 1)
    pk = hub.partition(3)
    expired, unexpired, renewed = await schedule(store, hub, iid, count=3)
    te, _ = await claim_act(store, hub, expired, SHORT)
    tu, _ = await claim_act(store, hub, unexpired, LONG)
    tr, _ = await claim_act(store, hub, renewed, SHORT)
    u_expiry = await redis.zscore(pk.leases, act_member(unexpired))
    await wait_past(store, max([await redis.zscore(pk.leases, act_member(i)) for i in (expired, renewed)]))
    assert await store.renew_activity_leases(hub, 3, [(renewed, tr)], LONG) == [renewed]
    assert await redis.zcard(pk.activities) == 0
    sweeper = make_store()  # any replica may sweep
    sweeper_hub = await sweeper.ensure_hub(hub.hub)
    t0 = await store.server_time_ms()
    messages, swept = await during(redis, store.channel, pk.activities,
                                   lambda: sweeper.sweep_expired_leases(sweeper_hub, 3, 100))
    t1 = await store.server_time_ms()
    assert swept == [expired] and messages == [f"{hub.hub} work {pk.activities}"]
    assert t0 <= await redis.zscore(pk.activities, expired) <= t1
    assert await redis.zscore(pk.leases, act_member(expired)) is None
    assert await redis.hget(pk.activity_tokens, expired) == te.encode()  # until the next claim takes it
    assert await redis.hget(pk.activity_payloads, expired) == request(expired)
    assert await redis.zscore(pk.leases, act_member(unexpired)) == u_expiry
    assert await redis.hget(pk.activity_tokens, unexpired) == tu.encode()
    assert await redis.hget(pk.activity_tokens, renewed) == tr.encode()
    assert await queued_items(store, hub, 3) == [expired]
    assert await sweeper.sweep_expired_leases(sweeper_hub, 3, 100) == []
    for p in (0, 1, 2):
        assert await sweeper.sweep_expired_leases(sweeper_hub, p, 100) == []
    again, payload = await claim_act(store, hub, expired)
    assert payload == request(expired)
    # taken by another claim: the late worker's claim is gone
    with pytest.raises(errors.LeaseLost):
        await store.complete_activity(hub, expired, te, task_completed(0, "late"))
    assert not await store.release_activity(hub, expired, te)


async def test_sweep_releases_both_kinds_of_expired_lease(store: Store, hub, redis):
    [iid] = ids_in_partition(hub, 0, 1)
    pk = hub.partition(0)
    [item] = await schedule(store, hub, iid)
    await claim_act(store, hub, item, SHORT)
    await store.raise_event(hub, iid, make.event_raised("Go", "1"))
    episode = await claim(store, hub, iid, SHORT)
    await wait_past(store, max(episode.lease_expiry_ms, await redis.zscore(pk.leases, act_member(item))))
    assert sorted(await store.sweep_expired_leases(hub, 0, 100)) == sorted([iid, item])
    assert await redis.zcard(pk.leases) == 0
    assert await redis.zscore(pk.ready, iid) is not None
    assert await queued_items(store, hub, 0) == [item]


async def test_sweep_script_rechecks_the_expiry(store: Store, hub, redis, key_prefix):
    fresh, renewed = await schedule(store, hub, "fresh", count=2)
    await claim_act(store, hub, fresh, LONG)
    tr, _ = await claim_act(store, hub, renewed, SHORT)
    pk = hub.for_instance("fresh")
    await wait_past(store, await redis.zscore(pk.leases, act_member(renewed)))
    assert await store.renew_activity_leases(hub, keys.partition_of("fresh", hub.partitions), [(renewed, tr)],
                                             LONG) == [renewed]
    before = await snapshot(redis, key_prefix)
    assert not await store.sweep_activity_lease(hub, fresh)
    assert not await store.sweep_activity_lease(hub, renewed)  # expired once, renewed since
    assert not await store.sweep_activity_lease(hub, protocol.activity_item("fresh", "e-fresh", 9))
    assert await snapshot(redis, key_prefix) == before


async def test_sweep_of_one_item_runs_once(store: Store, hub, redis):
    [item] = await schedule(store, hub, "once")
    pk = hub.for_instance("once")
    token, _ = await claim_act(store, hub, item, SHORT)
    await wait_past(store, await redis.zscore(pk.leases, act_member(item)))
    messages, swept = await during(redis, store.channel, pk.activities, lambda: store.sweep_activity_lease(hub, item))
    assert swept and messages == [f"{hub.hub} work {pk.activities}"]
    queued_since = await redis.zscore(pk.activities, item)
    messages, swept = await during(redis, store.channel, pk.activities, lambda: store.sweep_activity_lease(hub, item))
    assert not swept and messages == []
    assert await redis.zscore(pk.activities, item) == queued_since
    assert await redis.zcard(pk.leases) == 0
    assert await redis.hgetall(pk.activity_tokens) == {item.encode(): token.encode()}  # until the next claim


# -- complete ----------------------------------------------------------------------------------


async def test_complete_delivers_the_result_once_and_readies_the_instance(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        [item] = await schedule(store, hub, iid)
        token, _ = await claim_act(store, hub, item)
        assert await redis.llen(pk.inbox(iid)) == 0 and await redis.zcard(pk.ready) == 0
        result = task_completed(0, '"42"')
        t0 = await store.server_time_ms()
        messages, _ = await during(redis, store.channel, pk.ready,
                                   lambda: store.complete_activity(hub, item, token, result))
        t1 = await store.server_time_ms()
        assert messages == [f"{hub.hub} work {pk.ready}"]
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [result]
        assert t0 <= await redis.zscore(pk.ready, iid) <= t1
        assert t0 <= int((await fields(redis, pk, iid))["updated_ms"]) <= t1
        assert await redis.hget(pk.activity_payloads, item) is None
        assert await redis.hget(pk.activity_tokens, item) is None
        assert await redis.zscore(pk.leases, act_member(item)) is None
        assert await store.activity_requests(hub, [item]) == [None]
        before = await snapshot(redis, key_prefix)
        with pytest.raises(errors.LeaseLost):
            await store.complete_activity(hub, item, token, result)  # delivered again
        assert await snapshot(redis, key_prefix) == before
        episode = await claim(store, hub, iid)
        assert episode.new_events == [result]
    await assert_stats_right(redis, hub, key_prefix)


async def test_complete_may_claim_the_instance_it_readies_in_the_same_step(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        [item] = await schedule(store, hub, iid)
        token, _ = await claim_act(store, hub, item)
        result = task_completed(0, '"42"')
        episode_token = claim_token(hub, iid)
        t0 = await store.server_time_ms()
        messages, got = await during(redis, store.channel, pk.ready, lambda: store.complete_activity_and_claim(
            hub, item, token, result, DEFAULT_OVERFLOW, episode_token, LONG, EPISODE))
        t1 = await store.server_time_ms()
        assert not [m for m in messages if " work " in m]  # claimed in the same step: no stream is woken
        assert (got.instance_id, got.token, got.new_events) == (iid, episode_token, [result])
        assert len(got.past_events) == 3  # the first episode's OrchestratorStarted, ExecutionStarted, TaskScheduled
        assert t0 + LONG <= got.lease_expiry_ms <= t1 + LONG
        assert got.fields == await fields(redis, pk, iid)
        assert got.fields["lease"] == episode_token.encode() and got.fields["claimed_n"] == b"1"
        assert await redis.zscore(pk.ready, iid) is None
        assert await redis.zscore(pk.leases, lease_member(iid)) == got.lease_expiry_ms
        assert await redis.zscore(pk.leases, act_member(item)) is None
        before = await snapshot(redis, key_prefix)
        with pytest.raises(errors.LeaseLost):  # delivered again: nothing changes, nothing is claimed
            await store.complete_activity_and_claim(hub, item, token, result, DEFAULT_OVERFLOW,
                                                    claim_token(hub, iid), LONG, EPISODE)
        assert await snapshot(redis, key_prefix) == before
        assert (await store.complete_orchestration(hub, iid, episode_token, [b"done"], status="COMPLETED")).readied is False
    await assert_stats_right(redis, hub, key_prefix)


async def test_complete_claims_nothing_of_an_instance_in_an_episode_or_suspended(store: Store, hub, redis):
    [item] = await schedule(store, hub, "busy")
    token, _ = await claim_act(store, hub, item)
    await store.raise_event(hub, "busy", make.event_raised("Go", None))
    episode = await claim(store, hub, "busy")
    result = task_completed(0, "mid-episode")
    assert await store.complete_activity_and_claim(hub, item, token, result, DEFAULT_OVERFLOW,
                                                   claim_token(hub, "busy"), LONG, EPISODE) is None
    assert (await fields(redis, hub.for_instance("busy"), "busy"))["lease"] == episode.token.encode()
    assert (await store.complete_orchestration(hub, "busy", episode.token, [b"handled-go"])).readied is True
    assert (await claim(store, hub, "busy")).new_events == [result]

    [item] = await schedule(store, hub, "sleepy")
    token, _ = await claim_act(store, hub, item)
    await store.suspend_instance(hub, "sleepy", make.execution_suspended(None))
    assert await store.complete_activity_and_claim(hub, item, token, result, DEFAULT_OVERFLOW,
                                                   claim_token(hub, "sleepy"), LONG, EPISODE) is None
    assert (await redis.lrange(hub.for_instance("sleepy").inbox("sleepy"), 0, -1))[-1:] == [result]
    assert await redis.zscore(hub.for_instance("sleepy").leases, lease_member("sleepy")) is None


async def test_complete_of_a_ready_instance_keeps_its_place_and_does_not_wake(store: Store, hub, redis):
    a, b = await schedule(store, hub, "two", count=2)
    pk = hub.for_instance("two")
    ta, _ = await claim_act(store, hub, a)
    tb, _ = await claim_act(store, hub, b)
    ra, rb = task_completed(0, "a"), task_completed(1, "b")
    await store.complete_activity(hub, a, ta, ra)
    since = await redis.zscore(pk.ready, "two")
    messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_activity(hub, b, tb, rb))
    assert messages == []
    assert await redis.zscore(pk.ready, "two") == since
    assert await redis.lrange(pk.inbox("two"), 0, -1) == [ra, rb]
    assert not await redis.exists(pk.activity_tokens, pk.activity_payloads)


async def test_complete_with_a_stale_token_changes_nothing(store: Store, hub, redis, key_prefix):
    claimed, waiting = await schedule(store, hub, "st", count=2)
    token, _ = await claim_act(store, hub, claimed)
    before = await snapshot(redis, key_prefix)
    attempts = [(claimed, token + "-stale"), (claimed, ""), (waiting, act_token(hub, waiting)),
                (protocol.activity_item("st", "e-st", 5), "any"), (protocol.activity_item("nobody", "e", 0), "any")]
    for item, stale in attempts:
        with pytest.raises(errors.LeaseLost):
            await store.complete_activity(hub, item, stale, task_completed(0, "x"))
    assert await snapshot(redis, key_prefix) == before


async def test_complete_for_another_execution_is_dropped_but_clears_the_claim(store: Store, hub, redis, key_prefix):
    [item] = await schedule(store, hub, "can")
    pk = hub.for_instance("can")
    token, _ = await claim_act(store, hub, item)
    await store.raise_event(hub, "can", make.event_raised("Next", None))
    episode = await claim(store, hub, "can")
    await store.continue_as_new(hub, "can", episode.token, "e-can-2", [b"new-start"])
    before = await snapshot(redis, key_prefix)
    await store.complete_activity(hub, item, token, task_completed(0, "old"))
    after = await snapshot(redis, key_prefix)
    activity_keys = {pk.activity_tokens, pk.activity_payloads, pk.leases}
    assert {k: v for k, v in after.items() if k not in activity_keys} == \
        {k: v for k, v in before.items() if k not in activity_keys}
    assert await redis.lrange(pk.inbox("can"), 0, -1) == [b"new-start"]
    assert not await redis.exists(pk.activity_tokens, pk.activity_payloads, pk.leases)
    with pytest.raises(errors.LeaseLost):
        await store.complete_activity(hub, item, token, task_completed(0, "old"))


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED"])
async def test_complete_for_a_terminal_instance_is_dropped_but_clears_the_claim(store: Store, hub, redis, key_prefix,
                                                                              status):
    [item] = await schedule(store, hub, "end")
    pk = hub.for_instance("end")
    token, _ = await claim_act(store, hub, item)
    await store.raise_event(hub, "end", make.event_raised("Stop", None))
    episode = await claim(store, hub, "end")
    await store.complete_orchestration(hub, "end", episode.token, [b"completed"], status=status, output="out")
    before = await snapshot(redis, key_prefix)
    messages, _ = await during(redis, store.channel, pk.ready,
                               lambda: store.complete_activity(hub, item, token, task_completed(0, "late")))
    assert messages == []
    after = await snapshot(redis, key_prefix)
    activity_keys = {pk.activity_tokens, pk.activity_payloads, pk.leases}
    assert {k: v for k, v in after.items() if k not in activity_keys} == \
        {k: v for k, v in before.items() if k not in activity_keys}
    assert not await redis.exists(pk.inbox("end"), pk.activity_tokens, pk.activity_payloads, pk.leases)
    assert await redis.zscore(pk.ready, "end") is None
    assert await stats_of(redis, pk) == {status: 1}


async def test_complete_for_a_suspended_instance_waits_for_resume(store: Store, hub, redis, key_prefix):
    [item] = await schedule(store, hub, "sus")
    pk = hub.for_instance("sus")
    token, _ = await claim_act(store, hub, item)
    suspended = make.execution_suspended("wait")
    await store.suspend_instance(hub, "sus", suspended)
    result = task_completed(0, "r")
    messages, _ = await during(redis, store.channel, pk.ready,
                               lambda: store.complete_activity(hub, item, token, result))
    assert messages == []  # held until resumed: no work wake-up
    assert await redis.lrange(pk.inbox("sus"), 0, -1) == [suspended, result]
    assert await redis.zscore(pk.ready, "sus") is None
    assert not await redis.exists(pk.activity_tokens, pk.activity_payloads, pk.leases)
    await store.resume_instance(hub, "sus", make.execution_resumed(None))
    episode = await claim(store, hub, "sus")
    assert episode.new_events[:2] == [suspended, result]
    await assert_stats_right(redis, hub, key_prefix)


async def test_complete_during_an_episode_leaves_the_claim_and_the_event_for_the_next(store: Store, hub, redis):
    [item] = await schedule(store, hub, "busy")
    pk = hub.for_instance("busy")
    token, _ = await claim_act(store, hub, item)
    await store.raise_event(hub, "busy", make.event_raised("Go", None))
    episode = await claim(store, hub, "busy")
    result = task_completed(0, "mid-episode")
    await store.complete_activity(hub, item, token, result)
    assert (await fields(redis, pk, "busy"))["lease"] == episode.token.encode()
    assert await redis.hget(pk.instance("busy"), "claimed_n") == b"1"
    assert (await store.complete_orchestration(hub, "busy", episode.token, [b"handled-go"])).readied is True  # ready again
    assert await redis.lrange(pk.inbox("busy"), 0, -1) == [result]
    assert await redis.zscore(pk.ready, "busy") is not None
    assert (await claim(store, hub, "busy")).new_events == [result]


# -- requests ----------------------------------------------------------------------------------


async def test_activity_requests_reads_payloads_until_completed(store: Store, hub, redis):
    items = []
    for iid in ids_in_distinct_partitions(hub):
        items += await schedule(store, hub, iid, count=2)
    done = items[0]
    token, _ = await claim_act(store, hub, done)
    await claim_act(store, hub, items[1])
    await store.complete_activity(hub, done, token, task_completed(0, "x"))
    unknown = protocol.activity_item("nobody", "e", 0)
    got = await store.activity_requests(hub, items + [unknown])
    assert got == [None] + [request(item) for item in items[1:]] + [None]
    assert await store.activity_requests(hub, []) == []
