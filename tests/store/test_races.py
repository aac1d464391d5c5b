"""Interleavings that once broke the engine's promise (every orchestration finishes, exactly once), each
replayed step by step against every backend."""
from __future__ import annotations

from scheduler import protocol
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.engine import events as make
from scheduler.engine.episodes import parent_notification
from scheduler.protocol import SIGNAL, EntityMessage, OutboxMessage
from scheduler.store import Store
from scheduler.store.scripts import Code
from store_helpers import during, new
from test_completion import next_episode, running, unready
from test_dispatch import claim, wait_past
from test_relay import make_relay, terminated


async def come_due(store: Store, hub, iid: str) -> None:
    """Let the time of the instance's timers come (their scores, and its due entry, moved to just now)
    instead of waiting: the steps before it may take any time on a loaded machine."""
    pk = hub.for_instance(iid)
    now = await store.server_time_ms() - 1
    timers = await store.redis.zrange(pk.timers(iid), 0, -1)
    assert timers and await store.redis.zscore(pk.due, iid) is not None, "the timer waits in due"
    await store.redis.zadd(pk.timers(iid), {t: now for t in timers})
    await store.redis.zadd(pk.due, {iid: now})


async def test_a_timer_that_comes_due_during_a_later_episode_makes_the_instance_ready_at_its_end(store: Store, hub,
                                                                                                 redis):
    """Race 1: the promoter took the timer's due entry while an episode ran, a stream's claim found the
    instance leased and took it off ready; the episode's completion must make it ready again."""
    iid = "slow-replay"
    pk = hub.for_instance(iid)
    first = await running(store, hub, iid)
    fire = await store.server_time_ms() + 60_000
    await store.complete_orchestration(hub, iid, first.token, [b"timer-created"], timers=[(fire, b"timer-fired")])
    second = await next_episode(store, hub, iid)  # the activity's result, say: a slow episode starts
    await come_due(store, hub, iid)
    assert (await store.promote_due(hub, 100)).promoted_due_ms, "the timer's due entry went to ready"
    await unready(store, hub, iid)  # a stream's claim finds it leased
    completion = await store.complete_orchestration(hub, iid, second.token, [b"still-waiting"])
    assert completion.readied
    assert await redis.zscore(pk.ready, iid) is not None
    third = await claim(store, hub, iid)
    assert third is not None and third.new_events == [b"timer-fired"]


async def test_a_timer_that_comes_due_during_an_episode_is_handed_out_whatever_the_inbox(store: Store, hub, redis):
    """Race 1's family: an approval with a timeout whose timer fires during the episode of another
    event; the event was handed out with that episode, so the inbox is empty at its completion."""
    iid = "approval"
    first = await running(store, hub, iid)
    fire = await store.server_time_ms() + 60_000
    await store.complete_orchestration(hub, iid, first.token, [b"timeout-created"], timers=[(fire, b"timeout")])
    second = await next_episode(store, hub, iid, name="Approved")
    await come_due(store, hub, iid)
    await store.promote_due(hub, 100)
    await unready(store, hub, iid)
    await store.complete_orchestration(hub, iid, second.token, [])
    assert (await claim(store, hub, iid)).new_events == [b"timeout"]


async def test_promoted_work_behind_a_head_no_stream_takes_wakes_the_streams(store: Store, hub, redis):
    """Race 4: promote_due wakes the streams by the rule every script follows, not only when the
    queue was empty: a head waiting over a second (say, for a filter no stream has) must not hide it."""
    stuck = "stuck-head"
    pk = hub.for_instance(stuck)
    due_id = next(f"due-{i}" for i in range(1000) if hub.for_instance(f"due-{i}") == pk)
    await redis.zadd(pk.ready, {stuck: await store.server_time_ms() - 5_000})
    at = await store.server_time_ms() + 20
    await store.create_instance(hub, new(due_id, due_ms=at))
    await wait_past(store, at)
    messages, promotion = await during(redis, store.channel, pk.ready, lambda: store.promote_due(hub, 100))
    assert promotion.promoted_due_ms
    assert f"{hub.hub} work {pk.ready}" in messages


async def test_a_terminate_message_delivered_by_two_relays_is_applied_once(store: Store, hub, redis):
    """Race 2: the relay of each replica delivered every message; a terminate has to be idempotent by its
    message id, and one relay at a time drains a partition."""
    await running(store, hub, "kid")
    pk = hub.for_instance("kid")
    message = OutboxMessage("mum:p1:terminate:kid", "terminate", "kid", terminated('"stop"'))
    one, two = make_relay(store, hub), make_relay(store, hub)
    before = await redis.llen(pk.inbox("kid"))
    await one.deliver(message)
    await two.deliver(message)  # a relay that read the message before the first removed it
    assert await redis.llen(pk.inbox("kid")) == before + 1, "one ExecutionTerminated waits for the worker"


async def test_one_relay_at_a_time_drains_a_partition(store: Store, hub, redis):
    await store.create_instance(hub, new("target"))
    outbox = hub.partition(0).outbox
    raised = pb.HistoryEvent(eventId=-1, eventRaised=pb.EventRaisedEvent(name="go")).SerializeToString()
    await redis.rpush(outbox, OutboxMessage("m1", "event", "target", raised).encode())
    one, two = make_relay(store, hub), make_relay(store, hub)
    assert await store.take_outbox(hub, 0, one.owner, 10_000, 10) is not None
    assert await two._drain(0) is None  # noqa: SLF001 - held by the first: left alone
    assert await redis.llen(outbox) == 1
    assert await store.release_outbox(hub, 0, one.owner) == 1, "the holder sees what waits when it lets go"
    assert await two._drain(0) == 0  # noqa: SLF001
    assert await redis.llen(outbox) == 0 and not await redis.exists(hub.partition(0).relay)


async def test_message_ids_are_remembered_for_the_window_and_bounded(store: Store, hub, redis):
    """Race 3: an instance's de-duplication set grew forever; it now expires with the window."""
    await store.create_instance(hub, new("target"))
    pk = hub.for_instance("target")
    raised = pb.HistoryEvent(eventId=-1, eventRaised=pb.EventRaisedEvent(name="go")).SerializeToString()
    assert await store.deliver_event(hub, "target", "m1", raised) is Code.OK
    assert await store.deliver_event(hub, "target", "m1", raised) is Code.DONE_BEFORE
    ttl = await redis.pttl(pk.seen("target"))
    assert 0 < ttl <= protocol.DEDUP_WINDOW_MS
    old = await store.server_time_ms() - protocol.DEDUP_WINDOW_MS - 1
    await redis.zadd(pk.seen("target"), {"ancient": old})
    assert await store.deliver_event(hub, "target", "m2", raised) is Code.OK
    assert await redis.zscore(pk.seen("target"), "ancient") is None, "ids past the window are forgotten"


async def test_an_entity_remembers_more_than_its_last_thousand_messages(store: Store, hub, redis):
    """Race 3: an entity kept only its last 1,000 ids, so a retried signal on a busy entity ran twice."""
    entity = "@counter@busy"
    record = EntityMessage(SIGNAL, "first", payload=b"op").encode()
    assert (await store.deliver_entity_message(hub, entity, "first", record))[0] is Code.OK
    pk = hub.for_instance(entity)
    now = await store.server_time_ms()
    await redis.zadd(pk.entity(entity).seen, {f"later-{i}": now for i in range(1500)})
    later = EntityMessage(SIGNAL, "one-more", payload=b"op").encode()
    assert (await store.deliver_entity_message(hub, entity, "one-more", later))[0] is Code.OK
    assert (await store.deliver_entity_message(hub, entity, "first", record))[0] is Code.DONE_BEFORE


async def test_a_child_created_again_between_the_read_and_the_termination_tells_its_parent(store: Store, hub, redis):
    """Race 5: whether a termination ends the child at once was decided in Python from an earlier read;
    a child id created again in between (now a pending sub-orchestration) ended with no notice."""
    orchestrations = make_relay(store, hub).orchestrations  # the engine, with no streams
    await store.create_instance(hub, new("kid"))  # a top-level instance, no parent
    pk = hub.for_instance("kid")
    read = await store.get_instance(hub, "kid")
    await store.terminate_instance(hub, "kid", terminated("ended"), None)
    await store.create_instance(hub, new("kid", replaceable=("TERMINATED",), execution_id="e-kid-2",
                                         parent_instance_id="mum", parent_execution_id="p1", parent_task_id="4"))
    # the stale read had no parent: the store step refuses it rather than end the child without a notice
    stale = f"{read['execution_id'].decode()}/"
    code, _ = await store.terminate_instance(hub, "kid", terminated("stop"), None, b"", False, stale)
    assert code is Code.CHANGED
    assert (await store.get_instance(hub, "kid"))["status"] == b"PENDING"
    await orchestrations.terminate(hub, "kid", '"stop"', recursive=False)  # reads again: the notice goes
    outbox = await redis.lrange(pk.outbox, 0, -1)
    assert [OutboxMessage.decode(m).target for m in outbox] == ["mum"]
    expected = parent_notification(await store.get_instance(hub, "kid"), "TERMINATED", '"stop"', None)
    assert OutboxMessage.decode(outbox[0]).message_id == expected.message_id


async def test_retention_rechecks_the_end_time_when_it_purges(store: Store, hub, redis):
    """Race 6: an instance restarted and ended again after retention read the completion index was
    purged early; the purge script re-checks the end time."""
    await store.create_instance(hub, new("job"))
    await store.terminate_instance(hub, "job", make.execution_terminated(None, False), None)
    cutoff = await store.server_time_ms() + 1
    await wait_past(store, cutoff)
    # read by retention as ended before the cutoff; then restarted and ended again
    await store.create_instance(hub, new("job", replaceable=("TERMINATED",), execution_id="e-job-2"))
    await store.terminate_instance(hub, "job", make.execution_terminated(None, False), None)
    assert await store.purge_instances(hub, ["job"], cutoff) == 0
    assert await store.get_instance(hub, "job") is not None
    assert await store.purge_instances(hub, ["job"]) == 1


async def test_an_event_without_room_during_an_episode_fails_the_instance_at_its_next_dispatch(store: Store, hub,
                                                                                               redis):
    """An event that had no room while an episode ran marks the instance to fail (`overflow`); the
    episode's completion must make it ready for that, whatever its inbox holds."""
    iid = "overflowing"
    first = await running(store, hub, iid)
    await store.complete_orchestration(hub, iid, first.token, [b"waiting"])
    second = await next_episode(store, hub, iid)
    raised = pb.HistoryEvent(eventId=-1, eventRaised=pb.EventRaisedEvent(name="big")).SerializeToString()
    store.limits = type(store.limits)(max_inbox_events=0)  # no room for anything more
    assert await store.deliver_event(hub, iid, "m-big", raised, "EventTooLarge\nno room") is Code.INBOX_FULL
    await unready(store, hub, iid)
    completion = await store.complete_orchestration(hub, iid, second.token, [])
    assert completion.readied and await redis.zscore(hub.for_instance(iid).ready, iid) is not None


def child_ended(parent: str, parent_execution: str, child_execution: str = "e-kid") -> OutboxMessage:
    """The message a child sends its parent (execution ``parent_execution``) when it completes."""
    h = {"parent_instance_id": parent.encode(), "parent_execution_id": parent_execution.encode(),
         "parent_task_id": b"1", "execution_id": child_execution.encode()}
    notice = parent_notification(h, "COMPLETED", '"done"', None)
    assert notice is not None and OutboxMessage.decode(notice.encode()) == notice
    return notice


async def test_a_childs_end_for_an_earlier_execution_does_not_reach_the_one_that_continued_as_new(
        store: Store, hub, redis):
    """Found by the explorer (FOUND.md 3): a parent's execution 1 schedules a child and continues as new;
    execution 2 schedules a child of the same id. The end (or the failed creation) meant for task 1 of
    execution 1 must not end task 1 of execution 2, which is another task."""
    first = await running(store, hub, "mum")
    await store.continue_as_new(hub, "mum", first.token, "e-mum-2", [b"new-start"])
    assert await claim(store, hub, "mum") is not None
    relay = make_relay(store, hub)
    inbox = hub.for_instance("mum").inbox("mum")
    before = await redis.llen(inbox)
    await relay.deliver(child_ended("mum", "e-mum"))
    assert await redis.llen(inbox) == before, "the end for execution 1 was dropped"
    await relay.deliver(child_ended("mum", "e-mum-2", "e-kid-2"))
    assert await redis.llen(inbox) == before + 1, "the end for the running execution was delivered"


async def test_a_childs_end_for_the_execution_a_rewind_replaced_still_reaches_the_parent(store: Store, hub, redis):
    """A rewind gives the parent a new execution id, but it is the same execution run again: a child that
    was still running when the parent failed ends later and must still reach it."""
    first = await running(store, hub, "dad")
    await store.rewind_orchestration(hub, "dad", first.token, [b"dad-started"], 0, {"execution_id": "e-dad-2"})
    again = await claim(store, hub, "dad")
    await store.rewind_orchestration(hub, "dad", again.token, [b"dad-started"], 0, {"execution_id": "e-dad-3"})
    inbox = hub.for_instance("dad").inbox("dad")
    relay = make_relay(store, hub)
    await relay.deliver(child_ended("dad", "e-dad", "e-kid-a"))
    await relay.deliver(child_ended("dad", "e-dad-2", "e-kid-b"))
    await relay.deliver(child_ended("dad", "e-dad-3", "e-kid-c"))
    await relay.deliver(child_ended("dad", "e-other", "e-kid-d"))
    assert await redis.llen(inbox) == 3, "the ends for the execution and the two it was rewound from"
