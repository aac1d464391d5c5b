"""The race explorer: random interleavings of the steps of several replicas and workers against one task
hub with several partitions, with the invariants of design.md checked after every step (style.md 17).

Hypothesis' stateful testing picks the steps (starts now and delayed, claims, episode results with any
mix of actions, activity results, the clock moving, promotion, events, terminations, suspend/resume,
relays delivering a message twice, lease expiry and sweeps, abandons, lost workers, purges) and shrinks
a failure to the shortest sequence it can find, which it prints as Python steps. The budget is small in
CI; ``DT_EXPLORE_EXAMPLES=2000 python -m pytest tests/races -q`` explores longer (``DT_EXPLORE_STEPS``
sets the steps of one example). What it found is in FOUND.md.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import fakeredis
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from scheduler.protocol import ACTIVITY, ORCHESTRATION, TERMINAL
from scheduler.store.keys import hubs_key

from races_checks import anything, bookkeeping, check, due_now, exactly_once, liveness, snapshot, status_of
from races_worker import ENDS, Plan
from races_world import IDS, PARTITIONS, REPLICAS, World

EXAMPLES = int(os.environ.get("DT_EXPLORE_EXAMPLES", "100"))
LONG = "DT_EXPLORE_EXAMPLES" in os.environ  # a long run: no test timeout (shrinking a failure takes minutes)
STEPS = int(os.environ.get("DT_EXPLORE_STEPS", "50"))
# The CI budget explores a fixed set of examples (derandomized: the same on every run, so CI is not a
# lottery over races the long mode finds, see FOUND.md); the long mode explores new ones each run.
SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

replicas = st.integers(0, REPLICAS - 1)
ids = st.sampled_from(IDS)
index = st.integers(0, 7)
plans = st.builds(
    Plan,
    activities=st.integers(0, 2),
    timers=st.lists(st.sampled_from([0, 1000, 2500]), max_size=2).map(tuple),
    children=st.lists(ids, max_size=1).map(tuple),
    sends=st.lists(ids, max_size=1).map(tuple),
    terminates=st.lists(st.tuples(ids, st.booleans()), max_size=1).map(tuple),
    end=st.sampled_from([None, None, None, None, *ENDS[1:]]),
    wait_event=st.booleans())


outcomes = st.sampled_from(["complete", "complete", "complete", "complete", "abandon", "lose"])


class RaceExplorer(RuleBasedStateMachine):
    make_redis = None  # set by the test: a new client of the Redis under test
    prefix = "races"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = self.run(World.build(type(self).make_redis, self.prefix, "h" + uuid.uuid4().hex[:10],
                                          int(time.time() * 1000)))
        self._snapshot = None

    def run(self, coro):
        self._snapshot = None  # a step: what Redis holds changed
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        async def close():
            for pattern in self.world.hub.scan_patterns():
                found = [k async for k in self.world.redis.scan_iter(match=pattern, count=1000)]
                if found:
                    await self.world.redis.unlink(*found)
            # and its place in the registry: a long run makes more hubs than --max-task-hubs allows at once
            await self.world.redis.srem(hubs_key(self.world.hub.prefix), self.world.hub.hub)
            await self.world.aclose()
        self.run(close())
        self.loop.close()

    # -- client calls --------------------------------------------------------------------------

    @precondition(lambda self: any(status_of(self.snapshot(), iid) in (None, *TERMINAL) for iid in IDS))
    @rule(r=replicas, iid=ids, delay=st.sampled_from([None, None, 0, 1000, 3000]))
    def start(self, r, iid, delay):
        self.run(self.world.start(r, iid, delay))

    @rule(r=replicas, iid=ids, call=st.sampled_from(["raise_event", "raise_event", "terminate", "terminate recursive", "suspend",
                                                    "resume", "purge", "purge recursive"]))
    def client(self, r, iid, call):
        name, _, recursive = call.partition(" ")
        step = getattr(self.world, name)
        self.run(step(r, iid, True) if recursive else step(r, iid, False) if name in ("terminate", "purge")
                 else step(r, iid))

    # -- the replicas' loops -------------------------------------------------------------------

    @precondition(lambda self: anything(self.snapshot(), "due") or anything(self.snapshot(), "leases"))
    @rule(ms=st.sampled_from([200, 1000, 3000, 6000]))
    def advance_clock(self, ms):
        self.run(self.world.advance(ms))

    @precondition(lambda self: due_now(self.snapshot(), "due"))
    @rule(r=replicas, partition=st.none() | st.integers(0, PARTITIONS - 1), then_claim=st.booleans())
    def promote(self, r, partition, then_claim):
        self.run(self.world.promote(r, partition, then_claim))

    @precondition(lambda self: due_now(self.snapshot(), "leases"))
    @rule(r=replicas)
    def sweep_leases(self, r):
        self.run(self.world.sweep(r))

    @precondition(lambda self: anything(self.snapshot(), "outbox"))
    @rule(r=replicas, partition=st.integers(0, PARTITIONS - 1), i=index, remove=st.booleans())
    def relay(self, r, partition, i, remove):
        self.run(self.world.relay(r, partition, i, remove))

    # -- work streams and workers --------------------------------------------------------------

    @precondition(lambda self: anything(self.snapshot(), "ready"))
    @rule(r=replicas, i=index)
    def claim_episode(self, r, i):
        self.run(self.world.claim_episode(r, i))

    @precondition(lambda self: self.world.episodes)
    @rule(i=index, plan=plans, how=outcomes, took_ms=st.sampled_from([0, 0, 1000, 3000]))
    def report_episode(self, i, plan, how, took_ms):
        """The worker completes an episode (following ``plan``), hands it back (abandon, its stream
        closed) or vanishes (its lease runs out)."""
        i %= len(self.world.episodes)
        if how == "complete":
            self.run(self.world.complete_episode(i, plan, took_ms))
        elif how == "abandon":
            self.run(self.world.abandon(ORCHESTRATION, i))
        else:
            self.world.lose(ORCHESTRATION, i)

    @precondition(lambda self: anything(self.snapshot(), "activities"))
    @rule(r=replicas, i=index)
    def claim_activity(self, r, i):
        self.run(self.world.claim_activity(r, i))

    @precondition(lambda self: self.world.activities)
    @rule(i=index, fail=st.booleans(), how=outcomes)
    def report_activity(self, i, fail, how):
        i %= len(self.world.activities)
        if how == "complete":
            self.run(self.world.complete_activity(i, fail))
        elif how == "abandon":
            self.run(self.world.abandon(ACTIVITY, i))
        else:
            self.world.lose(ACTIVITY, i)

    # -- invariants ----------------------------------------------------------------------------

    def snapshot(self):
        if self._snapshot is None:
            self._snapshot = self.loop.run_until_complete(snapshot(self.world, IDS))
        return self._snapshot

    @invariant()
    def a_way_forward(self):
        check(liveness(self.snapshot(), self.world))

    @invariant()
    def exactly_once_in_effect(self):
        check(exactly_once(self.snapshot()))

    @invariant()
    def bookkeeping_agrees(self):
        check(bookkeeping(self.snapshot(), self.world))


def explore(make_redis) -> None:
    machine = type("RaceExplorer", (RaceExplorer,), {"make_redis": staticmethod(make_redis),
                                                     "prefix": "races" + uuid.uuid4().hex[:6]})
    run_state_machine_as_test(machine, settings=SETTINGS)


@pytest.mark.timeout(0 if LONG else 900)  # ~20 s alone; minutes on a loaded machine
def test_races_on_redis(redis_url):
    explore(lambda: aioredis.Redis.from_url(redis_url))


@pytest.mark.timeout(0 if LONG else 900)  # ~20 s alone; minutes on a loaded machine
def test_races_on_fakeredis():
    server = fakeredis.FakeServer()
    explore(lambda: fakeredis.FakeAsyncRedis(server=server))
