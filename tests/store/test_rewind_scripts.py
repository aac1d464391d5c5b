"""Store.rewind_instance and Store.rewind_orchestration on every backend: exact Redis contents, and
nothing written when refused."""
from __future__ import annotations

import pytest

from scheduler import errors
from scheduler.store import Store
from scheduler.store.scripts import Code

from store_helpers import ids_in_distinct_partitions, new
from test_completion import running
from test_dispatch import EPISODE, assert_stats_right, claim, fields, snapshot, stats_of

FAILURE = b"serialized-failure"
REWOUND = b"rewound-event"


async def failed(store: Store, hub, iid: str, left: list[bytes] = ()) -> None:
    """An instance that failed in its first episode; ``left``: events that came during that episode."""
    got = await running(store, hub, iid)
    for event in left:
        assert await store.deliver_event(hub, iid, f"m-{event.decode()}", event) is Code.OK
    await store.complete_orchestration(hub, iid, got.token, [b"completed"], "FAILED", "=out", FAILURE)


async def test_rewind_makes_a_failed_instance_running_with_the_event_alone(store: Store, hub, redis, key_prefix):
    for iid in ids_in_distinct_partitions(hub):
        pk = hub.for_instance(iid)
        await failed(store, hub, iid, left=[b"left-1", b"left-2"])
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [b"left-1", b"left-2"]
        size = int((await fields(redis, pk, iid))["size"])

        assert await store.rewind_instance(hub, iid, REWOUND) == (Code.OK, "FAILED")
        h = await fields(redis, pk, iid)
        assert h["status"] == b"RUNNING" and h["rewinding"] == b"1" and h["rewinds"] == b"1"
        assert not {"completed_ms", "output", "failure"} & set(h)
        assert int(h["size"]) == size + len(REWOUND)
        assert await redis.lrange(pk.history(iid), 0, -1) == [EPISODE, f"start:{iid}".encode(), b"completed",
                                                              b"left-1", b"left-2"]
        assert await redis.lrange(pk.inbox(iid), 0, -1) == [REWOUND]
        assert h["start"] == b"hist 1"
        assert await redis.zscore(pk.by_completed, iid) is None
        assert await redis.zscore(pk.ready, iid) is not None
        assert await stats_of(redis, pk) == {"RUNNING": 1}
    await assert_stats_right(redis, hub, key_prefix)


async def test_a_rewinding_claim_hands_out_the_rewind_event_alone(store: Store, hub, redis):
    await failed(store, hub, "c")
    await store.rewind_instance(hub, "c", REWOUND)
    await store.raise_event(hub, "c", b"raised")
    got = await claim(store, hub, "c")
    assert got.new_events == [REWOUND] and got.fields["claimed_n"] == b"1"


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "COMPLETED", "TERMINATED"])
async def test_rewind_of_an_instance_that_did_not_fail_changes_nothing(store: Store, hub, redis, key_prefix, status):
    await store.create_instance(hub, new("x"))
    if status != "PENDING":
        got = await claim(store, hub, "x")
        if status != "RUNNING":
            await store.complete_orchestration(hub, "x", got.token, [b"done"], status)
    before = await snapshot(redis, key_prefix)
    assert await store.rewind_instance(hub, "x", REWOUND) == (Code.WRONG_STATUS, status)
    assert await store.rewind_instance(hub, "nobody", REWOUND) == (Code.NOT_FOUND, None)
    assert await snapshot(redis, key_prefix) == before


async def test_a_rewind_asked_by_message_is_applied_once(store: Store, hub, redis, key_prefix):
    await failed(store, hub, "child")
    assert (await store.rewind_instance(hub, "child", REWOUND, "m1"))[0] is Code.OK
    got = await claim(store, hub, "child")
    await store.complete_orchestration(hub, "child", got.token, [b"again"], "FAILED")  # failed once more
    before = await snapshot(redis, key_prefix)
    assert await store.rewind_instance(hub, "child", REWOUND, "m1") == (Code.DONE_BEFORE, None)
    assert await snapshot(redis, key_prefix) == before
    assert (await store.rewind_instance(hub, "child", REWOUND, "m2"))[0] is Code.OK


async def test_a_rewind_without_room_is_refused_unless_unlimited(store: Store, hub, redis, key_prefix):
    await failed(store, hub, "full")
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.WorkItemTooLarge):
        await store.rewind_instance(hub, "full", b"x" * (store.limits.max_work_item_bytes + 1))
    assert await snapshot(redis, key_prefix) == before
    assert (await store.rewind_instance(hub, "full", b"x" * (store.limits.max_work_item_bytes + 1),
                                        limited=False))[0] is Code.OK


async def rewinding(store: Store, hub, iid: str):
    await failed(store, hub, iid)
    await store.rewind_instance(hub, iid, REWOUND)
    return await claim(store, hub, iid)


async def test_the_rewind_replaces_the_history_and_sets_its_work_going(store: Store, hub, redis):
    pk = hub.for_instance("r")
    got = await rewinding(store, hub, "r")
    await store.raise_event(hub, "r", b"meanwhile")
    await redis.zrem(pk.ready, "r")  # as a claim attempt during the episode does
    new_history = [b"o-started", b"x-started", b"scheduled", b"o-started-2", REWOUND]
    await store.rewind_orchestration(hub, "r", got.token, new_history, 1, {"execution_id": "e2"},
                                     [("r\ne2\n3", b"request")], [(4_000_000_000_000, b"fired")],
                                     [b"message-1", b"message-2"])
    h = await fields(redis, pk, "r")
    assert (h["status"], h["execution_id"], h["start"]) == (b"RUNNING", b"e2", b"hist 1")
    assert not {"rewinding", "lease", "claimed_n", "episode_start"} & set(h)
    assert int(h["size"]) == sum(map(len, new_history)) + len(b"meanwhile")
    assert await redis.lrange(pk.history("r"), 0, -1) == new_history
    assert await redis.lrange(pk.inbox("r"), 0, -1) == [b"meanwhile"]
    assert await redis.zscore(pk.ready, "r") is not None
    assert await redis.zcard(pk.leases) == 0
    assert await redis.hget(pk.activity_payloads, "r\ne2\n3") == b"request"
    assert await redis.zscore(pk.activities, "r\ne2\n3") is not None
    assert await redis.zrange(pk.timers("r"), 0, -1, withscores=True) == [(b"fired", 4e12)]
    assert await redis.zscore(pk.due, "r") == 4e12
    assert await redis.lrange(pk.outbox, 0, -1) == [b"message-1", b"message-2"]
    assert (await store.get_instance(hub, "r"))["start_event"] == b"x-started"


async def test_a_refused_rewind_changes_nothing(store: Store, hub, redis, key_prefix):
    got = await rewinding(store, hub, "s")
    before = await snapshot(redis, key_prefix)
    with pytest.raises(errors.LeaseLost):
        await store.rewind_orchestration(hub, "s", got.token + "-stale", [b"h"], 0, {"execution_id": "e2"})
    with pytest.raises(errors.HistoryLimitExceeded):
        await store.rewind_orchestration(hub, "s", got.token, [b"h"] * (store.limits.max_history_events + 1), 0,
                                         {"execution_id": "e2"})
    with pytest.raises(errors.WorkItemTooLarge):
        await store.rewind_orchestration(hub, "s", got.token, [b"h" * (store.limits.max_work_item_bytes + 1)], 0,
                                         {"execution_id": "e2"})
    assert await snapshot(redis, key_prefix) == before
