"""Store.complete_orchestration with each kind of action, continue_as_new, and the wake-ups of the
scripts that hand an instance back to its ready queue; exact Redis contents."""
from __future__ import annotations

import dataclasses

import pytest

from scheduler import errors, protocol
from scheduler.engine import events as make
from scheduler.store import keys
from scheduler.store import Store

from store_helpers import during, fence, ids_in_distinct_partitions, new, published
from test_dispatch import (EPISODE, LONG, SHORT, assert_stats_right, claim, fields, ids_in_partition, lease_member,
                           snapshot, stats_of, wait_past)

CLAIM_FIELDS = {"lease", "claimed_n", "episode_start"}


async def running(store: Store, hub, iid: str, lease_ms: int = LONG):
    """Create ``iid`` and claim its first episode."""
    await store.create_instance(hub, new(iid))
    got = await claim(store, hub, iid, lease_ms)
    assert got is not None
    return got


async def next_episode(store: Store, hub, iid: str, name: str = "Next", lease_ms: int = LONG):
    """Raise an event to an instance between episodes and claim the episode that handles it."""
    await store.raise_event(hub, iid, make.event_raised(name, None))
    got = await claim(store, hub, iid, lease_ms)
    assert got is not None
    return got


async def unready(store: Store, hub, iid: str) -> None:
    """A claim attempt during the live episode takes the instance out of ready (as a stream would)."""
    assert await claim(store, hub, iid) is None
    assert await store.redis.zscore(hub.for_instance(iid).ready, iid) is None




# -- history -----------------------------------------------------------------------------------


async def test_completion_moves_the_episode_to_the_history(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        start = f"start:{iid}".encode()
        await store.create_instance(hub, new(iid))
        raised = make.event_raised("A", "1")
        await store.raise_event(hub, iid, raised)
        first = await claim(store, hub, iid)
        assert first.fields["claimed_n"] == b"2"
        t0 = await store.server_time_ms()
        messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
            hub, iid, first.token, [b"action-1", b"action-2"]))
        t1 = await store.server_time_ms()
        assert messages == []  # nothing queued, nothing ended
        assert await redis.lrange(pk.history(iid), 0, -1) == [EPISODE, start, raised, b"action-1", b"action-2"]
        assert not await redis.exists(pk.inbox(iid))
        h = await fields(redis, pk, iid)
        assert h["start"] == b"hist 1" and h["status"] == b"RUNNING"
        assert not CLAIM_FIELDS & set(h)
        assert t0 <= int(h["updated_ms"]) <= t1
        assert await redis.zscore(pk.leases, lease_member(iid)) is None
        assert await redis.zscore(pk.ready, iid) is None  # nothing left to process
        assert (await store.get_instance(hub, iid))["start_event"] == start
        # a second episode appends behind the first; `start` already points into the history
        second = await next_episode(store, hub, iid, "B")
        assert second.past_events == [EPISODE, start, raised, b"action-1", b"action-2"]
        [b] = second.new_events
        await store.complete_orchestration(hub, iid, second.token, [b"action-3"])
        assert await redis.lrange(pk.history(iid), 5, -1) == [EPISODE, b, b"action-3"]
        assert await redis.hget(pk.instance(iid), "start") == b"hist 1"
        assert (await store.get_instance(hub, iid))["start_event"] == start
        assert await stats_of(redis, pk) == {"RUNNING": 1}
    await assert_stats_right(redis, hub, key_prefix)


async def test_completion_with_no_events_still_records_the_episode(store: Store, hub, redis):
    pk = hub.for_instance("bare")
    got = await running(store, hub, "bare")
    await store.complete_orchestration(hub, "bare", got.token, [])
    assert await redis.lrange(pk.history("bare"), 0, -1) == [EPISODE, b"start:bare"]
    assert not await redis.exists(pk.inbox("bare"), pk.timers("bare"), pk.outbox, pk.activities)


async def test_custom_status_is_set_kept_and_emptied(store: Store, hub, redis):
    pk = hub.for_instance("cs")
    got = await running(store, hub, "cs")
    await store.complete_orchestration(hub, "cs", got.token, [], custom_status='{"step": 1}')
    assert await redis.hget(pk.instance("cs"), "custom_status") == b'{"step": 1}'
    got = await next_episode(store, hub, "cs")
    await store.complete_orchestration(hub, "cs", got.token, [])  # None: left as it is
    assert await redis.hget(pk.instance("cs"), "custom_status") == b'{"step": 1}'
    got = await next_episode(store, hub, "cs")
    await store.complete_orchestration(hub, "cs", got.token, [], custom_status="")  # "" is a value
    assert await redis.hget(pk.instance("cs"), "custom_status") == b""
    assert await redis.hget(pk.instance("cs"), "status") == b"RUNNING"


# -- final status ------------------------------------------------------------------------------


@pytest.mark.parametrize("status, output, failure", [
    ("COMPLETED", '"done"', None),
    ("FAILED", None, b"serialized-failure-details"),
    ("TERMINATED", "", None),
])
async def test_final_status_ends_the_instance(store: Store, hub, redis, key_prefix, status, output, failure):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        first = await running(store, hub, iid)
        fire = await store.server_time_ms() + LONG
        await store.complete_orchestration(hub, iid, first.token, [b"timer-created"], timers=[(fire, b"timer-fired")])
        assert await redis.zscore(pk.due, iid) == fire
        last = await next_episode(store, hub, iid)
        late = make.event_raised("TooLate", None)
        await store.raise_event(hub, iid, late)  # arrives during the last episode: readies it
        assert await redis.zscore(pk.ready, iid) is not None
        t0 = await store.server_time_ms()
        messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
            hub, iid, last.token, [b"execution-completed"], status=status, output=output, failure=failure,
            custom_status="final"))
        t1 = await store.server_time_ms()
        assert messages == [f"{hub.hub} status {iid}"]  # and no work wake-up, although events remain
        h = await fields(redis, pk, iid)
        assert h["status"] == status.encode()
        assert t0 <= int(h["completed_ms"]) == int(h["updated_ms"]) <= t1
        assert h.get("output") == (None if output is None else output.encode())
        assert h.get("failure") == failure
        assert h["custom_status"] == b"final"
        assert not CLAIM_FIELDS & set(h)
        assert await redis.zscore(pk.ready, iid) is None
        assert await redis.zscore(pk.due, iid) is None
        assert await redis.zscore(pk.leases, lease_member(iid)) is None
        assert not await redis.exists(pk.timers(iid))
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [late]  # kept, never processed
        assert (await redis.lrange(pk.history(iid), -1, -1)) == [b"execution-completed"]
        assert await stats_of(redis, pk) == {status: 1}
        assert await claim(store, hub, iid) is None
    await assert_stats_right(redis, hub, key_prefix)


async def test_with_state_an_ending_completion_returns_what_get_instance_reads_after_it(store: Store, hub):
    for iid in ids_in_distinct_partitions(hub):
        first = await running(store, hub, iid)
        going_on = await store.complete_orchestration(hub, iid, first.token, [b"next"], with_state=True)
        assert going_on.state is None  # the orchestration goes on: nothing to hand a waiter
        last = await next_episode(store, hub, iid)
        done = await store.complete_orchestration(hub, iid, last.token, [b"execution-completed"], status="COMPLETED",
                                                  output='"out"', custom_status="final", with_state=True)
        assert done.readied is False
        assert done.state == await store.get_instance(hub, iid)
        assert done.state["status"] == b"COMPLETED" and done.state["output"] == b'"out"'
        assert done.state["start_event"] == f"start:{iid}".encode()  # the input, as GetInstance returns it
        # without asking, nothing is read
        other = f"{iid}-quiet"
        episode = await running(store, hub, other)
        assert (await store.complete_orchestration(hub, other, episode.token, [], status="COMPLETED")).state is None


# -- activities --------------------------------------------------------------------------------


async def test_activities_are_queued_with_their_requests(store: Store, hub, redis):
    a, b = ids_in_partition(hub, 1, 2, stem="act")
    pk = hub.partition(1)
    got = await running(store, hub, a)
    items = [protocol.activity_item(a, f"e-{a}", task) for task in range(3)]
    t0 = await store.server_time_ms()
    messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
        hub, a, got.token, [b"scheduled"] * 3, activities=[(item, b"req-" + item.encode()) for item in items]))
    t1 = await store.server_time_ms()
    assert messages == [f"{hub.hub} work {pk.activities}"]  # once: the queue was empty before the first
    queue = await redis.zrange(pk.activities, 0, -1, withscores=True)
    assert sorted(m.decode() for m, _ in queue) == items
    assert all(t0 <= score <= t1 for _, score in queue)
    assert await redis.hgetall(pk.activity_payloads) == {item.encode(): b"req-" + item.encode() for item in items}
    assert await store.activity_requests(hub, items) == [b"req-" + item.encode() for item in items]
    assert await store.queued(hub, protocol.ACTIVITY, 1, 10) == items
    # a queue that is not empty is not woken again
    other = await running(store, hub, b)
    more = protocol.activity_item(b, f"e-{b}", 0)
    messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
        hub, b, other.token, [], activities=[(more, b"req")]))
    assert messages == []
    assert await redis.zcard(pk.activities) == 4


# -- timers ------------------------------------------------------------------------------------


async def test_timers_arm_the_due_entry_earlier_only(store: Store, hub, redis):
    [iid] = ids_in_partition(hub, 2, 1, stem="tm")
    pk = hub.partition(2)
    now = await store.server_time_ms()
    t50, t40, t45 = now + 50_000, now + 40_000, now + 45_000
    got = await running(store, hub, iid)
    messages, _ = await during(redis, store.channel, pk.due, lambda: store.complete_orchestration(
        hub, iid, got.token, [b"timer-created"], timers=[(t50, b"fired-50")]))
    assert messages == [f"{hub.hub} due {t50} {pk.due}"]
    assert await redis.zscore(pk.due, iid) == t50
    assert await redis.zrange(pk.timers(iid), 0, -1, withscores=True) == [(b"fired-50", t50)]
    got = await next_episode(store, hub, iid)
    messages, _ = await during(redis, store.channel, pk.due, lambda: store.complete_orchestration(
        hub, iid, got.token, [b"timer-created"], timers=[(t40, b"fired-40")]))
    assert messages == [f"{hub.hub} due {t40} {pk.due}"]
    assert await redis.zscore(pk.due, iid) == t40  # moved earlier
    got = await next_episode(store, hub, iid)
    messages, _ = await during(redis, store.channel, pk.due, lambda: store.complete_orchestration(
        hub, iid, got.token, [b"timer-created"], timers=[(t45, b"fired-45")]))
    assert messages == []
    assert await redis.zscore(pk.due, iid) == t40  # not moved later
    assert await redis.zrange(pk.timers(iid), 0, -1, withscores=True) == [
        (b"fired-40", t40), (b"fired-45", t45), (b"fired-50", t50)]
    assert await redis.zscore(pk.ready, iid) is None


async def test_timers_of_one_completion_arm_the_earliest(store: Store, hub, redis):
    pk = hub.for_instance("many")
    now = await store.server_time_ms()
    got = await running(store, hub, "many")
    messages, _ = await during(redis, store.channel, pk.due, lambda: store.complete_orchestration(
        hub, "many", got.token, [], timers=[(now + 30_000, b"t-30"), (now + 20_000, b"t-20"),
                                            (now + 25_000, b"t-25")]))
    assert messages == [f"{hub.hub} due {now + 30_000} {pk.due}", f"{hub.hub} due {now + 20_000} {pk.due}"]
    assert await redis.zscore(pk.due, "many") == now + 20_000
    assert await redis.zcard(pk.timers("many")) == 3


async def test_a_timer_behind_the_partitions_head_does_not_wake(store: Store, hub, redis):
    early, iid = ids_in_partition(hub, 3, 2, stem="hd")
    pk = hub.partition(3)
    now = await store.server_time_ms()
    await store.create_instance(hub, new(early, due_ms=now + 10_000))
    got = await running(store, hub, iid)
    messages, _ = await during(redis, store.channel, pk.due, lambda: store.complete_orchestration(
        hub, iid, got.token, [], timers=[(now + 30_000, b"fired")]))
    assert messages == []
    assert await redis.zrange(pk.due, 0, -1, withscores=True) == [(early.encode(), now + 10_000),
                                                                  (iid.encode(), now + 30_000)]


async def test_a_claim_rearms_the_due_entry_at_the_next_timer(store: Store, hub, redis):
    [iid] = ids_in_partition(hub, 0, 1, stem="ra")
    p, pk = 0, hub.partition(0)
    now = await store.server_time_ms()
    soon, later = now + 30, now + LONG
    got = await running(store, hub, iid)
    await store.complete_orchestration(hub, iid, got.token, [b"timers-created"],
                                       timers=[(soon, b"fired-soon"), (later, b"fired-later")])
    assert await redis.zscore(pk.due, iid) == soon
    await wait_past(store, soon)
    assert (await store.promote_due(hub, 100, [p])).promoted_due_ms == [soon]
    assert await redis.zscore(pk.due, iid) is None
    messages, episode = await during(redis, store.channel, pk.due, lambda: claim(store, hub, iid))
    assert messages == [f"{hub.hub} due {later} {pk.due}"]
    assert episode.new_events == [b"fired-soon"]
    assert await redis.zrange(pk.timers(iid), 0, -1, withscores=True) == [(b"fired-later", later)]
    assert await redis.zscore(pk.due, iid) == later
    await store.complete_orchestration(hub, iid, episode.token, [b"timer-handled"])
    assert await redis.zscore(pk.due, iid) == later  # stays armed after the episode


async def test_a_claim_rearming_behind_the_partitions_head_does_not_wake(store: Store, hub, redis):
    early, iid = ids_in_partition(hub, 1, 2, stem="rb")
    pk = hub.partition(1)
    now = await store.server_time_ms()
    soon, later = now + 30, now + LONG
    got = await running(store, hub, iid)
    await store.complete_orchestration(hub, iid, got.token, [], timers=[(soon, b"fired-soon"),
                                                                         (later, b"fired-later")])
    await wait_past(store, soon)
    assert (await store.promote_due(hub, 100, [1])).promoted_due_ms == [soon]
    await store.create_instance(hub, new(early, due_ms=now + 20_000))
    messages, episode = await during(redis, store.channel, pk.due, lambda: claim(store, hub, iid))
    assert messages == []
    assert episode.new_events == [b"fired-soon"]
    assert await redis.zscore(pk.due, iid) == later


@pytest.mark.parametrize("later_timer", [True, False])
async def test_a_claim_that_delivers_a_timer_before_its_promotion_moves_the_due_entry(store: Store, hub, redis,
                                                                                    later_timer):
    [iid] = ids_in_partition(hub, 2, 1, stem="np")
    p, pk = 2, hub.partition(2)
    now = await store.server_time_ms()
    soon, later = now + 30, now + LONG
    got = await running(store, hub, iid)
    timers = [(soon, b"fired-soon")] + ([(later, b"fired-later")] if later_timer else [])
    await store.complete_orchestration(hub, iid, got.token, [], timers=timers)
    await wait_past(store, soon)
    episode = await next_episode(store, hub, iid)  # an event readies it before the promoter runs
    assert episode.new_events[-1] == b"fired-soon"
    await store.complete_orchestration(hub, iid, episode.token, [b"handled"])
    # the delivered timer no longer keeps the instance due; only the next one (if any) does
    assert await redis.zscore(pk.due, iid) == (later if later_timer else None)
    assert (await store.promote_due(hub, 100, [p])).promoted_due_ms == []


# -- outbox ------------------------------------------------------------------------------------


async def test_outbox_messages_are_written_in_order_and_wake_the_relay(store: Store, hub, redis):
    a, b = ids_in_partition(hub, 2, 2, stem="ob")
    pk = hub.partition(2)
    first = [protocol.OutboxMessage(f"{a}:m{i}", "event", f"target-{i}", f"payload-{i}".encode()).encode()
             for i in range(3)]
    got = await running(store, hub, a)
    messages, _ = await during(redis, store.channel, pk.outbox, lambda: store.complete_orchestration(
        hub, a, got.token, [b"sent"] * 3, outbox=first))
    assert messages == [f"{hub.hub} outbox {pk.outbox}"]
    assert await redis.lrange(pk.outbox, 0, -1) == first
    assert await store.take_outbox(hub, 2, "relay-1", 10_000, 10) == first
    assert await store.take_outbox(hub, 2, "relay-2", 10_000, 10) is None, "one relay at a time holds an outbox"
    assert await store.release_outbox(hub, 2, "relay-1") == 3
    other = await running(store, hub, b)
    second = protocol.OutboxMessage(f"{b}:m0", "create", "child", b"child-start").encode()
    messages, _ = await during(redis, store.channel, pk.outbox, lambda: store.complete_orchestration(
        hub, b, other.token, [b"sent"], outbox=[second]))
    assert messages == [f"{hub.hub} outbox {pk.outbox}"]
    assert await redis.lrange(pk.outbox, 0, -1) == first + [second]
    again = await next_episode(store, hub, b)
    messages, _ = await during(redis, store.channel, pk.outbox, lambda: store.complete_orchestration(
        hub, b, again.token, []))
    assert messages == []
    assert await redis.llen(pk.outbox) == 4


async def test_every_kind_of_action_in_one_completion(store: Store, hub, redis):
    iid = "all"
    pk = hub.for_instance(iid)
    got = await running(store, hub, iid)
    fire = await store.server_time_ms() + LONG
    item = protocol.activity_item(iid, "e-all", 0)
    message = protocol.OutboxMessage("all:m0", "event", "peer", b"hello").encode()
    messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
        hub, iid, got.token, [b"e1", b"e2", b"e3"], custom_status="cs", activities=[(item, b"req")],
        timers=[(fire, b"fired")], outbox=[message]))
    assert messages == [f"{hub.hub} outbox {pk.outbox}", f"{hub.hub} work {pk.activities}", f"{hub.hub} due {fire} {pk.due}"]
    assert await redis.lrange(pk.history(iid), 0, -1) == [EPISODE, b"start:all", b"e1", b"e2", b"e3"]
    assert await redis.lrange(pk.outbox, 0, -1) == [message]
    assert await redis.hgetall(pk.activity_payloads) == {item.encode(): b"req"}
    assert await redis.zrange(pk.timers(iid), 0, -1, withscores=True) == [(b"fired", fire)]
    assert await redis.zscore(pk.due, iid) == fire
    assert (await fields(redis, pk, iid))["custom_status"] == b"cs"


# -- events that arrived during the episode ------------------------------------------------------


async def test_events_that_arrived_during_the_episode_ready_the_instance_with_a_wake_up(store: Store, hub, redis,
                                                                                        key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        got = await running(store, hub, iid)
        arrived = make.event_raised("During", "1")
        await store.raise_event(hub, iid, arrived)
        await unready(store, hub, iid)
        assert await redis.zcard(pk.ready) == 0
        t0 = await store.server_time_ms()
        messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
            hub, iid, got.token, [b"done-with-start"]))
        t1 = await store.server_time_ms()
        assert messages == [f"{hub.hub} work {pk.ready}"]
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [arrived]
        assert t0 <= await redis.zscore(pk.ready, iid) <= t1
        assert await redis.lrange(pk.history(iid), 0, -1) == [EPISODE, f"start:{iid}".encode(), b"done-with-start"]
        assert not CLAIM_FIELDS & set(await fields(redis, pk, iid))
        again = await claim(store, hub, iid)
        assert again.new_events == [arrived] and again.fields["claimed_n"] == b"1"
    await assert_stats_right(redis, hub, key_prefix)


async def test_events_that_arrived_during_the_episode_keep_the_ready_place(store: Store, hub, redis):
    pk = hub.for_instance("kp")
    got = await running(store, hub, "kp")
    await store.raise_event(hub, "kp", make.event_raised("During", "1"))
    since = await redis.zscore(pk.ready, "kp")
    await wait_past(store, int(since))
    messages, _ = await during(redis, store.channel, pk.ready, lambda: store.complete_orchestration(
        hub, "kp", got.token, []))
    assert messages == []
    assert await redis.zscore(pk.ready, "kp") == since


async def test_completion_of_an_episode_suspended_meanwhile_leaves_it_out_of_ready_and_due(store: Store, hub, redis):
    pk = hub.for_instance("held")
    got = await running(store, hub, "held")
    await store.suspend_instance(hub, "held", make.execution_suspended(None))
    fire = await store.server_time_ms() + LONG
    await store.complete_orchestration(hub, "held", got.token, [b"timer-created"], timers=[(fire, b"fired")])
    assert await redis.zrange(pk.timers("held"), 0, -1, withscores=True) == [(b"fired", fire)]
    assert await redis.zscore(pk.ready, "held") is None
    assert await redis.zscore(pk.due, "held") is None


async def test_final_status_of_an_episode_suspended_meanwhile_drops_the_suspension_fields(store: Store, hub, redis,
                                                                                          key_prefix):
    pk = hub.for_instance("ended")
    got = await running(store, hub, "ended")
    await store.suspend_instance(hub, "ended", make.execution_suspended(None))
    await store.complete_orchestration(hub, "ended", got.token, [b"completed"], status="COMPLETED", output="o")
    h = await fields(redis, pk, "ended")
    assert h["status"] == b"COMPLETED" and await stats_of(redis, pk) == {"COMPLETED": 1}
    assert not {"prev_status", "due_ms"} & set(h)


# -- what changes nothing ----------------------------------------------------------------------


async def test_history_limit_exceeded_changes_nothing(store: Store, hub, redis, key_prefix):
    iid = "lim"
    pk = hub.for_instance(iid)
    got = await running(store, hub, iid)
    await store.complete_orchestration(hub, iid, got.token, [b"a1"])  # history: 3 events
    got = await next_episode(store, hub, iid)  # hands out 1 event: 3 + 1 + 1 + 2 = 7
    await store.raise_event(hub, iid, make.event_raised("During", None))
    fire = await store.server_time_ms() + LONG
    actions = dict(status="COMPLETED", output="o", custom_status="cs",
                   activities=[(protocol.activity_item(iid, "e-lim", 1), b"req")], timers=[(fire, b"t")],
                   outbox=[protocol.OutboxMessage("m", "event", "x", b"p").encode()])
    before = await snapshot(redis, key_prefix)

    async def exceed() -> pytest.ExceptionInfo:
        with pytest.raises(errors.HistoryLimitExceeded) as exceeded:
            await store.complete_orchestration(hub, iid, got.token, [b"a2", b"a3"], **actions)
        return exceeded

    store.limits = dataclasses.replace(store.limits, max_history_events=6)
    messages, exceeded = await during(redis, store.channel, pk.ready, exceed)
    assert exceeded.value.would_be == 7 and exceeded.value.instance_id == iid
    assert messages == []
    assert await snapshot(redis, key_prefix) == before
    store.limits = dataclasses.replace(store.limits, max_history_events=7)
    await store.complete_orchestration(hub, iid, got.token, [b"a2", b"a3"], **actions)  # at the limit
    assert await redis.llen(pk.history(iid)) == 7
    assert await redis.hget(pk.instance(iid), "status") == b"COMPLETED"


async def test_a_stale_token_changes_nothing(store: Store, hub, redis, key_prefix):
    iid = "stale"
    pk = hub.for_instance(iid)
    await store.create_instance(hub, new("never-claimed"))
    first = await running(store, hub, iid, SHORT)
    await store.raise_event(hub, iid, make.event_raised("E", None))
    await wait_past(store, first.lease_expiry_ms)
    second = await claim(store, hub, iid)  # takes over the expired lease
    fire = await store.server_time_ms() + LONG
    actions = dict(custom_status="cs", activities=[(protocol.activity_item(iid, "e-stale", 0), b"req")],
                   timers=[(fire, b"t")], outbox=[protocol.OutboxMessage("m", "event", "x", b"p").encode()])
    before = await snapshot(redis, key_prefix)

    async def attempts() -> None:
        for target, token in [(iid, first.token), (iid, ""), (iid, "made-up"), ("never-claimed", first.token),
                              ("no-such-instance", "any")]:
            with pytest.raises(errors.LeaseLost):
                await store.complete_orchestration(hub, target, token, [b"x"], status="COMPLETED", **actions)
            with pytest.raises(errors.LeaseLost):
                await store.continue_as_new(hub, target, token, "e-next", [b"new-start"])

    messages, _ = await during(redis, store.channel, pk.ready, attempts)
    assert messages == []
    assert await snapshot(redis, key_prefix) == before
    await store.complete_orchestration(hub, iid, second.token, [b"x"])
    assert await redis.lrange(pk.history(iid), -1, -1) == [b"x"]
    with pytest.raises(errors.LeaseLost):  # a second completion of the same episode
        await store.complete_orchestration(hub, iid, second.token, [b"x"])


async def test_a_completion_after_the_lease_expired_but_before_a_sweep_is_applied(store: Store, hub, redis):
    pk = hub.for_instance("slow")
    got = await running(store, hub, "slow", SHORT)
    await wait_past(store, got.lease_expiry_ms)
    await store.complete_orchestration(hub, "slow", got.token, [b"late-but-current"])
    assert await redis.lrange(pk.history("slow"), -1, -1) == [b"late-but-current"]
    assert await redis.zcard(pk.leases) == 0
    assert await store.sweep_expired_leases(hub, keys.partition_of("slow", hub.partitions), 10) == []


# -- continue as new ---------------------------------------------------------------------------


async def test_continue_as_new_starts_the_next_execution(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        first = await running(store, hub, iid)
        fire = await store.server_time_ms() + LONG
        await store.complete_orchestration(hub, iid, first.token, [b"timer-created"], timers=[(fire, b"fired")],
                                           custom_status="old")
        # what only a terminal instance has; the new execution must not show it
        await redis.hset(pk.instance(iid), mapping={"output": "old-output", "failure": "old-failure"})
        episode = await next_episode(store, hub, iid, "Restart")
        arrived = make.event_raised("During", "1")
        await store.raise_event(hub, iid, arrived)
        await unready(store, hub, iid)
        new_start, carried = b"execution-started-2", make.event_raised("Carried", "c")
        t0 = await store.server_time_ms()
        messages, _ = await during(redis, store.channel, pk.ready, lambda: store.continue_as_new(
            hub, iid, episode.token, f"e2-{iid}", [new_start, carried], custom_status="new"))
        t1 = await store.server_time_ms()
        assert messages == [f"{hub.hub} work {pk.ready}"]
        assert not await redis.exists(pk.history(iid), pk.timers(iid))
        assert await redis.zscore(pk.due, iid) is None
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [new_start, carried, arrived]
        h = await fields(redis, pk, iid)
        assert h["execution_id"] == f"e2-{iid}".encode() and h["start"] == b"inbox 0"
        assert h["status"] == b"RUNNING" and h["custom_status"] == b"new"
        assert not {"output", "failure"} & set(h)
        assert not CLAIM_FIELDS & set(h)
        assert t0 <= int(h["updated_ms"]) <= t1
        assert await redis.zscore(pk.leases, lease_member(iid)) is None
        assert t0 <= await redis.zscore(pk.ready, iid) <= t1
        assert (await store.get_instance(hub, iid))["start_event"] == new_start
        assert await stats_of(redis, pk) == {"RUNNING": 1}
        again = await claim(store, hub, iid)
        assert again.past_events == [] and again.new_events == [new_start, carried, arrived]
        assert again.fields["execution_id"] == f"e2-{iid}".encode()
        await store.complete_orchestration(hub, iid, again.token, [b"started"])
        assert await redis.lrange(pk.history(iid), 0, -1) == [EPISODE, new_start, carried, arrived, b"started"]
        assert (await store.get_instance(hub, iid))["start_event"] == new_start
    await assert_stats_right(redis, hub, key_prefix)


async def test_continue_as_new_keeps_custom_status_and_an_earlier_ready_place(store: Store, hub, redis):
    pk = hub.for_instance("cn")
    first = await running(store, hub, "cn")
    await store.complete_orchestration(hub, "cn", first.token, [], custom_status="kept")
    episode = await next_episode(store, hub, "cn")
    await store.raise_event(hub, "cn", make.event_raised("During", None))
    since = await redis.zscore(pk.ready, "cn")
    await wait_past(store, int(since))
    messages, _ = await during(redis, store.channel, pk.ready, lambda: store.continue_as_new(
        hub, "cn", episode.token, "e-cn-2", [b"start-2"]))
    assert messages == []
    assert await redis.zscore(pk.ready, "cn") == since
    assert await redis.hget(pk.instance("cn"), "custom_status") == b"kept"
    assert await redis.lindex(pk.inbox("cn"), 0) == b"start-2" and await redis.llen(pk.inbox("cn")) == 2


async def test_continue_as_new_with_a_stale_token_changes_nothing(store: Store, hub, redis, key_prefix):
    pk = hub.for_instance("cs")
    first = await running(store, hub, "cs")
    assert await store.release_orchestration(hub, "cs", first.token)
    second = await claim(store, hub, "cs")
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.LeaseLost):
        await store.continue_as_new(hub, "cs", first.token, "e-cs-2", [b"start-2"])
    assert await snapshot(redis, key_prefix) == before
    await store.continue_as_new(hub, "cs", second.token, "e-cs-2", [b"start-2"])
    with pytest.raises(errors.LeaseLost):
        await store.continue_as_new(hub, "cs", second.token, "e-cs-3", [b"start-3"])
    assert await redis.lrange(pk.inbox("cs"), 0, -1) == [b"start-2"]


# -- hand-backs wake the ready queue -------------------------------------------------------------


async def test_release_wakes_an_empty_ready_queue(store: Store, hub, redis):
    a, b = ids_in_partition(hub, 3, 2, stem="rl")
    pk = hub.partition(3)
    got = await running(store, hub, a)
    assert await redis.zcard(pk.ready) == 0
    messages, released = await during(redis, store.channel, pk.ready,
                                      lambda: store.release_orchestration(hub, a, got.token))
    assert released and messages == [f"{hub.hub} work {pk.ready}"]
    again = await claim(store, hub, a)
    await store.create_instance(hub, new(b))  # ready not empty now
    messages, released = await during(redis, store.channel, pk.ready,
                                      lambda: store.release_orchestration(hub, a, again.token))
    assert released and messages == []
    assert await redis.zscore(pk.ready, a) is not None


async def test_sweep_wakes_an_empty_ready_queue(store: Store, hub, redis):
    [iid] = ids_in_partition(hub, 0, 1, stem="sw")
    pk = hub.partition(0)
    got = await running(store, hub, iid, SHORT)
    await wait_past(store, got.lease_expiry_ms)
    assert await redis.zcard(pk.ready) == 0
    messages, swept = await during(redis, store.channel, pk.ready, lambda: store.sweep_orchestration_lease(hub, iid))
    assert swept and messages == [f"{hub.hub} work {pk.ready}"]
    assert await redis.zscore(pk.ready, iid) is not None
    assert await redis.zcard(pk.leases) == 0
    again = await claim(store, hub, iid, SHORT)
    await wait_past(store, again.lease_expiry_ms)
    messages, swept = await during(redis, store.channel, pk.ready, lambda: store.sweep_expired_leases(hub, 0, 10))
    assert swept == [iid] and messages == [f"{hub.hub} work {pk.ready}"]


async def test_release_and_sweep_of_a_suspended_instance_do_not_wake(store: Store, hub, redis):
    a, b = ids_in_partition(hub, 2, 2, stem="sz")
    pk = hub.partition(2)
    ga = await running(store, hub, a)
    gb = await running(store, hub, b, SHORT)
    for iid in (a, b):
        await store.suspend_instance(hub, iid, make.execution_suspended(None))
    await wait_past(store, gb.lease_expiry_ms)

    async def hand_back() -> None:
        assert await store.release_orchestration(hub, a, ga.token)
        assert await store.sweep_orchestration_lease(hub, b)

    messages, _ = await during(redis, store.channel, pk.ready, hand_back)
    assert messages == []
    assert await redis.zcard(pk.ready) == 0 and await redis.zcard(pk.leases) == 0


