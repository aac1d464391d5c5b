"""Store dispatch primitives: claim, renew, release and sweep of orchestration leases; exact Redis contents."""
from __future__ import annotations

import asyncio

import pytest

from scheduler import protocol
from scheduler.engine import events as make
from scheduler.store import keys
from scheduler.store import Store
from scheduler.store import Claim
from scheduler.store.orchestrations import RENEW_BATCH

from instance_setup import finish
from store_helpers import during, eventually, fence, ids_in_distinct_partitions, new, prefix_keys, published

LONG = 60_000  # ms: a lease that does not expire during a test
SHORT = 20  # ms: a lease the test waits out (polling Redis time)
EPISODE = b"orchestrator-started"


async def snapshot(redis, prefix: str) -> dict[str, bytes]:
    return {k: await redis.dump(k) for k in await prefix_keys(redis, prefix)}


async def stats_of(redis, pk) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(pk.stats)).items() if int(v)}


async def assert_stats_right(redis, hub: keys.HubKeys, prefix: str) -> None:
    """Every partition's stats hash counts exactly the statuses of its instance hashes."""
    counted: dict[str, dict[str, int]] = {pk.stats: {} for pk in hub.all_partitions()}
    for key in await prefix_keys(redis, prefix):
        if ":inst:" in key:
            iid = key.split(":inst:", 1)[1]
            status = (await redis.hget(key, "status")).decode()
            per = counted[hub.for_instance(iid).stats]
            per[status] = per.get(status, 0) + 1
    for pk in hub.all_partitions():
        assert await stats_of(redis, pk) == counted[pk.stats]


def ids_in_partition(hub: keys.HubKeys, partition: int, count: int, stem: str = "p") -> list[str]:
    ids, i = [], 0
    while len(ids) < count:
        if keys.partition_of(f"{stem}-{i}", hub.partitions) == partition:
            ids.append(f"{stem}-{i}")
        i += 1
    return ids


def claim_token(hub: keys.HubKeys, iid: str) -> str:
    return protocol.claim_token(hub.hub, keys.partition_of(iid, hub.partitions), protocol.ORCHESTRATION, iid)


def lease_member(iid: str) -> str:
    return keys.lease_member(protocol.ORCHESTRATION, iid)


async def claim(store: Store, hub, iid: str, lease_ms: int = LONG) -> Claim | None:
    return await store.claim_orchestration(hub, iid, claim_token(hub, iid), lease_ms, EPISODE)


async def wait_past(store: Store, ms: int) -> None:
    """Poll Redis time until it is past ``ms``."""
    async def passed() -> bool:
        return await store.server_time_ms() > ms
    await eventually(passed)


async def fields(redis, pk, iid: str) -> dict[str, bytes]:
    return {k.decode(): v for k, v in (await redis.hgetall(pk.instance(iid))).items()}


# -- claim -------------------------------------------------------------------------------------


async def test_claim_hands_out_history_and_inbox_sets_running_and_leases(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        await store.create_instance(hub, new(iid))
        await store.raise_event(hub, iid, make.event_raised("Go", "1"))
        await redis.rpush(pk.history(iid), b"past-1", b"past-2")
        inbox_before = await redis.lrange(pk.inbox(iid), 0, -1)
        assert await store.queued(hub, protocol.ORCHESTRATION, keys.partition_of(iid, hub.partitions), 10) == [iid]
        token = claim_token(hub, iid)
        t0 = await store.server_time_ms()
        async with published(redis, store.channel) as (messages, drain_until):
            got = await store.claim_orchestration(hub, iid, token, LONG, EPISODE)
            await drain_until(lambda m: f"{hub.hub} status {iid}" in m)
        t1 = await store.server_time_ms()
        assert got is not None
        assert (got.instance_id, got.token) == (iid, token)
        assert got.past_events == [b"past-1", b"past-2"]
        assert got.new_events == inbox_before and len(inbox_before) == 2
        assert t0 + LONG <= got.lease_expiry_ms <= t1 + LONG
        h = await fields(redis, pk, iid)
        assert got.fields == h
        assert h["status"] == b"RUNNING" and h["lease"] == token.encode()
        assert h["claimed_n"] == b"2" and h["episode_start"] == EPISODE
        assert t0 <= int(h["updated_ms"]) <= t1
        assert await redis.zscore(pk.leases, lease_member(iid)) == got.lease_expiry_ms
        assert await redis.zscore(pk.ready, iid) is None
        assert await redis.lrange(pk.inbox(iid), 0, -1) == inbox_before  # not consumed
        assert await stats_of(redis, pk) == {"RUNNING": 1}
    await assert_stats_right(redis, hub, key_prefix)


async def test_claim_of_a_running_instance_keeps_status_and_publishes_nothing(store: Store, hub, redis):
    await store.create_instance(hub, new("r"))
    pk = hub.for_instance("r")
    first = await claim(store, hub, "r")
    assert await store.release_orchestration(hub, "r", first.token)
    messages, second = await during(redis, store.channel, pk.ready, lambda: claim(store, hub, "r"))
    assert second is not None and second.fields["status"] == b"RUNNING"
    assert messages == []
    assert await stats_of(redis, pk) == {"RUNNING": 1}


async def test_second_claim_by_another_replica_gets_nothing(store: Store, hub, redis, make_store, key_prefix):
    other = make_store()
    other_hub = await other.ensure_hub(hub.hub)
    for iid in ids_in_distinct_partitions(hub):
        await store.create_instance(hub, new(iid))
        assert await claim(store, hub, iid) is not None
    before = await snapshot(redis, key_prefix)
    for iid in ids_in_distinct_partitions(hub):
        assert await claim(other, other_hub, iid) is None
    assert await claim(other, other_hub, "never-created") is None
    assert await snapshot(redis, key_prefix) == before


async def test_concurrent_claims_by_four_replicas_claim_each_instance_once(make_store, hub_name, key_prefix):
    stores = [make_store() for _ in range(4)]
    hubs = [await s.ensure_hub(hub_name) for s in stores]
    await stores[0].load_scripts()  # as the App does at start-up (else 200 concurrent NOSCRIPT reloads)
    ids = [f"c-{i}" for i in range(200)]
    await asyncio.gather(*(stores[0].create_instance(hubs[0], new(iid)) for iid in ids))

    async def replica(store: Store, hub) -> list[Claim]:
        claims: list[Claim] = []
        while True:
            candidates = [iid for p in range(hub.partitions) for iid in await store.queued(hub, protocol.ORCHESTRATION, p, 25)]
            if not candidates:
                return claims
            got = await asyncio.gather(*(claim(store, hub, iid) for iid in candidates))
            claims += [c for c in got if c is not None]

    results = await asyncio.gather(*(replica(s, h) for s, h in zip(stores, hubs)))
    claimed = [c.instance_id for claims in results for c in claims]
    assert sorted(claimed) == sorted(ids)
    redis, hub = stores[0].redis, hubs[0]
    for c in (c for claims in results for c in claims):
        pk = hub.for_instance(c.instance_id)
        assert await redis.hget(pk.instance(c.instance_id), "lease") == c.token.encode()
        assert await redis.zscore(pk.leases, lease_member(c.instance_id)) == c.lease_expiry_ms
    assert sum([await redis.zcard(pk.leases) for pk in hub.all_partitions()]) == 200
    assert sum([await redis.zcard(pk.ready) for pk in hub.all_partitions()]) == 0
    assert sum([(await stats_of(redis, pk)).get("RUNNING", 0) for pk in hub.all_partitions()]) == 200
    await assert_stats_right(redis, hub, key_prefix)


async def test_claim_of_an_instance_not_ready_changes_nothing(store: Store, hub, redis, key_prefix):
    """A scheduled start waits on the due set: nothing dispatches it before its time."""
    for iid in ids_in_distinct_partitions(hub):
        due = await store.server_time_ms() + LONG
        await store.create_instance(hub, new(iid, due_ms=due))
    before = await snapshot(redis, key_prefix)
    for iid in ids_in_distinct_partitions(hub):
        assert await claim(store, hub, iid) is None
    assert await snapshot(redis, key_prefix) == before


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "TERMINATED", "SUSPENDED"])
async def test_claim_takes_an_instance_that_cannot_run_out_of_ready(store: Store, hub, redis, key_prefix, status):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        await store.create_instance(hub, new(iid))
        if status == "SUSPENDED":
            await store.suspend_instance(hub, iid, make.execution_suspended(None))
        else:
            await finish(redis, hub, iid, status)
        await redis.zadd(pk.ready, {iid: 1})  # a stale ready entry
        before = await fields(redis, pk, iid)
        assert await claim(store, hub, iid) is None
        assert await redis.zscore(pk.ready, iid) is None
        assert await redis.zcard(pk.leases) == 0
        assert await fields(redis, pk, iid) == before
    await assert_stats_right(redis, hub, key_prefix)


async def test_claim_of_a_missing_instance_only_takes_it_out_of_ready(store: Store, hub, redis, key_prefix):
    pk = hub.for_instance("ghost")
    await redis.zadd(pk.ready, {"ghost": 1})
    assert await claim(store, hub, "ghost") is None
    assert await prefix_keys(redis, key_prefix) == {hub.meta, keys.hubs_key(key_prefix),
                                                    keys.generations_key(key_prefix)}


async def test_claim_during_a_live_episode_leaves_the_lease_and_unreadies(store: Store, hub, redis, make_store):
    other = make_store()
    other_hub = await other.ensure_hub(hub.hub)
    await store.create_instance(hub, new("busy"))
    pk = hub.for_instance("busy")
    first = await claim(store, hub, "busy")
    assert await store.raise_event(hub, "busy", make.event_raised("E", "1")) == "RUNNING"
    assert await redis.zscore(pk.ready, "busy") is not None  # RUNNING + new event: ready
    assert await claim(other, other_hub, "busy") is None
    assert await redis.zscore(pk.ready, "busy") is None
    h = await fields(redis, pk, "busy")
    assert h["lease"] == first.token.encode() and h["claimed_n"] == b"1"
    assert await redis.zscore(pk.leases, lease_member("busy")) == first.lease_expiry_ms


async def test_claim_takes_over_an_expired_lease_not_yet_swept(store: Store, hub, redis):
    await store.create_instance(hub, new("late"))
    pk = hub.for_instance("late")
    first = await claim(store, hub, "late", SHORT)
    await store.raise_event(hub, "late", make.event_raised("E", "1"))
    await wait_past(store, first.lease_expiry_ms)
    second = await claim(store, hub, "late")
    assert second is not None and len(second.new_events) == 2
    assert (await fields(redis, pk, "late"))["lease"] == second.token.encode()
    assert await redis.zscore(pk.leases, lease_member("late")) == second.lease_expiry_ms
    assert await store.renew_orchestration_leases(hub, keys.partition_of("late", hub.partitions), [("late", first.token)],
                                    LONG) == []
    assert not await store.release_orchestration(hub, "late", first.token)
    assert await stats_of(redis, pk) == {"RUNNING": 1}


async def test_events_raised_after_the_claim_stay_beyond_claimed_n(store: Store, hub, redis):
    await store.create_instance(hub, new("e"))
    pk = hub.for_instance("e")
    first = await claim(store, hub, "e")
    assert first.new_events == [b"start:e"]
    await store.raise_event(hub, "e", make.event_raised("A", "1"))
    await store.raise_event(hub, "e", make.event_raised("B", "2"))
    assert await redis.llen(pk.inbox("e")) == 3
    assert await redis.hget(pk.instance("e"), "claimed_n") == b"1"
    assert await store.release_orchestration(hub, "e", first.token)
    again = await claim(store, hub, "e")
    assert again.new_events == await redis.lrange(pk.inbox("e"), 0, -1) and len(again.new_events) == 3
    assert again.fields["claimed_n"] == b"3"


# -- renew -------------------------------------------------------------------------------------


async def test_renew_extends_only_leases_whose_token_is_current(store: Store, hub, redis):
    a, b, c = ids_in_partition(hub, 1, 3)
    pk = hub.partition(1)
    for iid in (a, b, c):
        await store.create_instance(hub, new(iid))
    ca = await claim(store, hub, a, 10_000)
    cb = await claim(store, hub, b, 10_000)
    t0 = await store.server_time_ms()
    renewed = await store.renew_orchestration_leases(hub, 1, [(a, ca.token), (b, cb.token + "-stale"), (c, "never-claimed")],
                                       LONG)
    t1 = await store.server_time_ms()
    assert renewed == [a]
    assert t0 + LONG <= await redis.zscore(pk.leases, lease_member(a)) <= t1 + LONG
    assert await redis.zscore(pk.leases, lease_member(b)) == cb.lease_expiry_ms
    assert await redis.zscore(pk.leases, lease_member(c)) is None
    assert await store.renew_orchestration_leases(hub, 1, [], LONG) == []


async def test_renew_after_release_renews_nothing(store: Store, hub, redis, key_prefix):
    [a] = ids_in_partition(hub, 2, 1)
    await store.create_instance(hub, new(a))
    ca = await claim(store, hub, a)
    assert await store.release_orchestration(hub, a, ca.token)
    before = await snapshot(redis, key_prefix)
    assert await store.renew_orchestration_leases(hub, 2, [(a, ca.token)], LONG) == []
    assert await snapshot(redis, key_prefix) == before


async def test_renew_batches_beyond_one_script_call(store: Store, hub, redis):
    ids = ids_in_partition(hub, 0, RENEW_BATCH + 7)
    await store.load_scripts()
    await asyncio.gather(*(store.create_instance(hub, new(iid)) for iid in ids))
    claims = await asyncio.gather(*(claim(store, hub, iid, 10_000) for iid in ids))
    items = [(c.instance_id, c.token) for c in claims]
    items[3] = (items[3][0], "stale")
    renewed = await store.renew_orchestration_leases(hub, 0, items, LONG)
    assert sorted(renewed) == sorted(iid for iid, _ in items if iid != ids[3])


async def test_renew_refuses_an_instance_of_another_partition(store: Store, hub):
    [x] = ids_in_partition(hub, 3, 1)
    with pytest.raises(ValueError):
        await store.renew_orchestration_leases(hub, 0, [(x, "t")], LONG)


# -- release -----------------------------------------------------------------------------------


async def test_release_with_the_current_token_readies_and_clears(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        await store.create_instance(hub, new(iid))
        got = await claim(store, hub, iid)
        inbox = await redis.lrange(pk.inbox(iid), 0, -1)
        t0 = await store.server_time_ms()
        assert await store.release_orchestration(hub, iid, got.token)
        t1 = await store.server_time_ms()
        assert t0 <= await redis.zscore(pk.ready, iid) <= t1
        assert await redis.zcard(pk.leases) == 0
        h = await fields(redis, pk, iid)
        assert not {"lease", "claimed_n", "episode_start"} & set(h)
        assert h["status"] == b"RUNNING"
        assert await redis.lrange(pk.inbox(iid), 0, -1) == inbox
        assert not await store.release_orchestration(hub, iid, got.token)  # a second release: stale
    await assert_stats_right(redis, hub, key_prefix)


async def test_release_with_a_stale_token_changes_nothing(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("s"))
    await store.create_instance(hub, new("never-claimed"))
    await claim(store, hub, "s")
    before = await snapshot(redis, key_prefix)
    assert not await store.release_orchestration(hub, "s", "not-the-token")
    assert not await store.release_orchestration(hub, "s", "")
    assert not await store.release_orchestration(hub, "never-claimed", "any")
    assert not await store.release_orchestration(hub, "no-such-instance", "any")
    assert await snapshot(redis, key_prefix) == before


async def test_release_of_a_suspended_instance_does_not_ready_it(store: Store, hub, redis, key_prefix):
    await store.create_instance(hub, new("z"))
    pk = hub.for_instance("z")
    got = await claim(store, hub, "z")
    await store.suspend_instance(hub, "z", make.execution_suspended(None))
    assert await store.release_orchestration(hub, "z", got.token)
    assert await redis.zscore(pk.ready, "z") is None and await redis.zcard(pk.leases) == 0
    await store.resume_instance(hub, "z", make.execution_resumed(None))
    assert await redis.zscore(pk.ready, "z") is not None
    assert await claim(store, hub, "z") is not None
    await assert_stats_right(redis, hub, key_prefix)


# -- sweep -------------------------------------------------------------------------------------


async def test_sweep_readies_expired_leases_only(store: Store, hub, redis, make_store, key_prefix):
    expired, unexpired, renewed = ids_in_partition(hub, 1, 3)
    pk = hub.partition(1)
    for iid in (expired, unexpired, renewed):
        await store.create_instance(hub, new(iid))
    ce = await claim(store, hub, expired, SHORT)
    cu = await claim(store, hub, unexpired, LONG)
    cr = await claim(store, hub, renewed, SHORT)
    await wait_past(store, max(ce.lease_expiry_ms, cr.lease_expiry_ms))
    assert await store.renew_orchestration_leases(hub, 1, [(renewed, cr.token)], LONG) == [renewed]
    sweeper = make_store()  # any replica may sweep
    sweeper_hub = await sweeper.ensure_hub(hub.hub)
    t0 = await store.server_time_ms()
    assert await sweeper.sweep_expired_leases(sweeper_hub, 1, 100) == [expired]
    t1 = await store.server_time_ms()
    assert t0 <= await redis.zscore(pk.ready, expired) <= t1
    kept = await fields(redis, pk, expired)  # the late worker's claim holds until the next claim takes it
    assert (kept["lease"], kept["claimed_n"], kept["episode_start"]) == (ce.token.encode(), b"1", EPISODE)
    assert await redis.zscore(pk.leases, lease_member(expired)) is None
    assert await redis.zscore(pk.leases, lease_member(unexpired)) == cu.lease_expiry_ms
    assert (await fields(redis, pk, renewed))["lease"] == cr.token.encode()
    for iid in (unexpired, renewed):
        assert await redis.zscore(pk.ready, iid) is None
    assert await sweeper.sweep_expired_leases(sweeper_hub, 1, 100) == []
    for p in (0, 2, 3):
        assert await sweeper.sweep_expired_leases(sweeper_hub, p, 100) == []
    again = await claim(store, hub, expired)
    assert again is not None and again.new_events == [f"start:{expired}".encode()]
    assert not await store.release_orchestration(hub, expired, ce.token)  # taken: the late worker's claim is gone
    await assert_stats_right(redis, hub, key_prefix)


async def test_sweep_is_bounded_by_its_limit(store: Store, hub, redis):
    ids = ids_in_partition(hub, 2, 5)
    pk = hub.partition(2)
    for iid in ids:
        await store.create_instance(hub, new(iid))
    claims = [await claim(store, hub, iid, SHORT) for iid in ids]
    await wait_past(store, max(c.lease_expiry_ms for c in claims))
    first = await store.sweep_expired_leases(hub, 2, 2)
    assert len(first) == 2 and await redis.zcard(pk.leases) == 3
    rest = await store.sweep_expired_leases(hub, 2, 10)
    assert sorted(first + rest) == sorted(ids)
    assert await redis.zcard(pk.leases) == 0 and await redis.zcard(pk.ready) == 5
    assert await store.sweep_expired_leases(hub, 2, 0) == []


async def test_sweep_script_rechecks_the_expiry(store: Store, hub, redis, key_prefix):
    """The per-instance step leaves a lease alone that is no longer expired when it runs."""
    await store.create_instance(hub, new("fresh"))
    pk = hub.for_instance("fresh")
    await claim(store, hub, "fresh", LONG)
    before = await snapshot(redis, key_prefix)
    assert not await store.sweep_orchestration_lease(hub, "fresh")
    assert not await store.sweep_orchestration_lease(hub, "nobody")
    assert await snapshot(redis, key_prefix) == before


async def test_sweep_of_a_suspended_or_vanished_instance_only_ends_the_lease(store: Store, hub, redis, key_prefix):
    sus, gone = ids_in_partition(hub, 3, 2)
    pk = hub.partition(3)
    for iid in (sus, gone):
        await store.create_instance(hub, new(iid))
    cs = await claim(store, hub, sus, SHORT)
    cg = await claim(store, hub, gone, SHORT)
    await store.suspend_instance(hub, sus, make.execution_suspended(None))
    await redis.delete(pk.instance(gone), pk.inbox(gone))
    await redis.hincrby(pk.stats, "RUNNING", -1)
    await redis.zremrangebylex(pk.by_status, "[RUNNING|", "(RUNNING}")  # gone's member (sus is SUSPENDED)
    await wait_past(store, max(cs.lease_expiry_ms, cg.lease_expiry_ms))
    assert sorted(await store.sweep_expired_leases(hub, 3, 10)) == sorted([sus, gone])
    assert await redis.zcard(pk.leases) == 0 and await redis.zcard(pk.ready) == 0
    h = await fields(redis, pk, sus)
    assert h["status"] == b"SUSPENDED" and h["lease"] == cs.token.encode()  # its worker may still report
    assert not await redis.exists(pk.instance(gone))
    await assert_stats_right(redis, hub, key_prefix)


async def test_a_queue_that_stops_being_empty_is_named_in_a_work_wake_up(store: Store, hub, redis):
    iid = "wake"
    pk = hub.for_instance(iid)
    async with published(redis, store.channel) as (messages, drain_until):
        await store.create_instance(hub, new(iid))  # ready was empty
        await drain_until(lambda m: f"{hub.hub} work {pk.ready}" in m)
        running = await claim(store, hub, iid)
        await store.complete_orchestration(hub, iid, running.token, [], activities=[("item-1", b"request")])
        await drain_until(lambda m: f"{hub.hub} work {pk.activities}" in m)
        await store.raise_event(hub, iid, make.event_raised("Go", "1"))  # running: ready again
        await drain_until(lambda m: m.count(f"{hub.hub} work {pk.ready}") == 2)
        await store.raise_event(hub, iid, make.event_raised("Go", "2"))  # already ready: no wake-up
        await fence(redis, store.channel, pk.ready, "marker")
        await drain_until(lambda m: "marker" in m)
    assert messages.count(f"{hub.hub} work {pk.ready}") == 2
    assert keys.queue_of(pk.ready) == ("ready", keys.partition_of(iid, hub.partitions))
    assert keys.queue_of(pk.activities) == ("activities", keys.partition_of(iid, hub.partitions))
