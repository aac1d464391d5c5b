"""The race explorer's world: one task hub with P partitions, R replicas on one Redis, a test clock,
and what the workers hold. Each method is one step of one replica or worker, taken through the engine
object that owns the rule (Orchestrations, Relay, the dispatcher's work kinds) or through the store
method that is the step (promote, sweep, purge), as a replica does it.

Replicas are built as scheduler/app.py builds them (Engine.build), with a Dispatcher that has no work
streams: the test is the streams, claiming work by the same calls a stream makes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from google.protobuf import wrappers_pb2

from scheduler import errors
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.config import Config
from scheduler.engine import Engine, subtree
from scheduler.engine.orchestrations import new_instance
from scheduler.engine.relay import HOLD_MS, Relay
from scheduler.protocol import ACTIVITY, ORCHESTRATION, TERMINAL, OutboxMessage, claim_token, new_id, parse_activity_item
from scheduler.store import Store
from scheduler.store.keys import HubKeys, partition_of

from races_worker import Plan, episode

PARTITIONS = 3
REPLICAS = 2
LEASE_MS = 5000


def pick_ids(partitions: int = PARTITIONS, count: int = 3) -> tuple[str, ...]:
    """Instance ids, one per partition."""
    ids: list[str] = []
    for p in itertools.cycle(range(partitions)):
        ids.append(next(f"o{i}" for i in itertools.count() if f"o{i}" not in ids
                        and partition_of(f"o{i}", partitions) == p))
        if len(ids) == count:
            return tuple(ids)
    raise AssertionError


IDS = pick_ids()


@dataclass
class Replica:
    name: str
    store: Store
    engine: Engine
    relay: Relay


@dataclass
class Held:
    """A work item a worker holds: (replica whose stream claimed it, item, claim token, work item)."""

    replica: int
    item: str
    token: str
    work: pb.WorkItem


@dataclass
class World:
    hub: HubKeys
    replicas: list[Replica]
    clock_key: str
    now_ms: int
    episodes: list[Held] = field(default_factory=list)
    activities: list[Held] = field(default_factory=list)
    awaits_event: dict[str, bool] = field(default_factory=dict)  # the model: instance -> awaits an event
    counter: itertools.count = field(default_factory=itertools.count)
    log: list[str] = field(default_factory=list)

    @classmethod
    async def build(cls, make_redis, prefix: str, hub_name: str, now_ms: int) -> World:
        clock_key = f"{prefix}:clock"
        replicas = []
        for r in range(REPLICAS):
            store = Store(make_redis(), prefix, default_partitions=PARTITIONS, clock_key=clock_key)
            engine = Engine.build(store, Config(lease_seconds=LEASE_MS / 1000))
            replicas.append(Replica(f"r{r}", store, engine, None))
        await replicas[0].store.redis.set(clock_key, now_ms)
        hub = await replicas[0].store.ensure_hub(hub_name)
        for replica in replicas:
            await replica.store.ensure_hub(hub_name)
            replica.relay = Relay(replica.store, hub, replica.engine.orchestrations, replica.engine.entities)
        return cls(hub, replicas, clock_key, now_ms)

    async def aclose(self) -> None:
        for replica in self.replicas:
            await replica.store.aclose()

    @property
    def redis(self):
        return self.replicas[0].store.redis

    def _orchs(self, r: int):
        return self.replicas[r].engine.orchestrations

    def _token(self, kind: str, item: str) -> str:
        return claim_token(self.hub.hub, partition_of(item.split("\n")[0], self.hub.partitions), kind, item)

    # -- the clock, promotion, sweeps -------------------------------------------------------------

    async def advance(self, ms: int) -> None:
        self.now_ms += ms
        await self.redis.set(self.clock_key, self.now_ms)

    async def promote(self, r: int, partition: int | None, then_claim: bool) -> None:
        """Replica ``r``'s promoter; with ``then_claim``, a stream woken by it claims every ready instance."""
        await self.replicas[r].store.promote_due(self.hub, 1000, None if partition is None else [partition])
        if then_claim:
            for _ in range(len(await self.queued("ready"))):
                await self.claim_episode(r, 0)

    async def sweep(self, r: int) -> None:
        await self.replicas[r].engine.dispatcher.sweep([(self.hub, None)])

    # -- client calls ----------------------------------------------------------------------------

    async def start(self, r: int, iid: str, delay_ms: int | None) -> None:
        started = pb.ExecutionStartedEvent(name="Orch", input=wrappers_pb2.StringValue(value='"in"'),
                                           orchestrationInstance=pb.OrchestrationInstance(
                                               instanceId=iid, executionId=wrappers_pb2.StringValue(value=new_id())))
        if delay_ms is not None:
            started.scheduledStartTimestamp.FromMilliseconds(self.now_ms + delay_ms)
        try:
            # an ended instance of the id is replaced (the client's orchestrationIdReusePolicy)
            await self._orchs(r).start(self.hub, new_instance(started, replaceable=tuple(sorted(TERMINAL))))
        except errors.InstanceExists:
            return
        self.awaits_event[iid] = False

    async def raise_event(self, r: int, iid: str) -> None:
        try:
            await self._orchs(r).raise_event(self.hub, iid, "go", f'"client:{next(self.counter)}"')
        except errors.InstanceNotFound:
            pass

    async def terminate(self, r: int, iid: str, recursive: bool) -> None:
        try:
            await self._orchs(r).terminate(self.hub, iid, f"client:{next(self.counter)}", recursive)
        except errors.InstanceNotFound:
            pass

    async def suspend(self, r: int, iid: str) -> None:
        try:
            await self._orchs(r).suspend(self.hub, iid, "test")
        except errors.InstanceNotFound:
            pass

    async def resume(self, r: int, iid: str) -> None:
        try:
            await self._orchs(r).resume(self.hub, iid, "test")
        except errors.InstanceNotFound:
            pass

    async def purge(self, r: int, iid: str, recursive: bool) -> None:
        store = self.replicas[r].store
        if recursive:
            await subtree.purge_tree(store, self.hub, iid)
        else:
            await store.purge_instance(self.hub, iid)

    # -- the relays --------------------------------------------------------------------------------

    async def relay(self, r: int, partition: int, index: int, remove: bool) -> None:
        """Replica ``r``'s relay takes a partition's outbox (one relay at a time), delivers one of its messages,
        and removes it and lets go, unless the replica dies in between (``remove`` False: its hold on the
        partition expires and another relay delivers the message again)."""
        replica = self.replicas[r]
        batch = await replica.store.take_outbox(self.hub, partition, replica.relay.owner, HOLD_MS, 100)
        if not batch:  # empty, or another relay holds it
            return
        raw = batch[index % len(batch)]
        await replica.relay.deliver(OutboxMessage.decode(raw))
        if remove:
            await replica.store.outbox_remove(self.hub, partition, raw)
            await replica.store.release_outbox(self.hub, partition, replica.relay.owner)
        else:  # the hold's expiry runs on Redis' own clock, not the test's: let it lapse now
            await replica.store.redis.delete(self.hub.partition(partition).relay)

    # -- work streams and workers ------------------------------------------------------------------

    async def queued(self, queue: str) -> list[str]:
        found = []
        for pk in self.hub.all_partitions():
            found += [m.decode() for m in await self.redis.zrange(pk.queue(queue), 0, -1)]
        return found

    async def claim_episode(self, r: int, index: int) -> None:
        ready = await self.queued("ready")
        if not ready:
            return
        iid = ready[index % len(ready)]
        token = self._token(ORCHESTRATION, iid)
        claimed = await self.replicas[r].engine.dispatcher.kinds[ORCHESTRATION].claim(self.hub, iid, token, LEASE_MS)
        if claimed is not None:
            self.episodes.append(Held(r, iid, token, claimed[0]))

    async def complete_episode(self, index: int, plan: Plan, took_ms: int = 0) -> None:
        """A worker completes an episode following ``plan``; the episode ``took_ms``: meanwhile the clock
        moved, and a promoter ran, whose wake-up made a stream claim what it promoted."""
        held = self.episodes.pop(index % len(self.episodes))
        if took_ms:
            await self.advance(took_ms)
            await self.promote(1 - held.replica, None, True)
        done = episode(held.work.orchestratorRequest, held.token, plan, self.now_ms)
        try:
            await self._orchs(held.replica).complete_episode(self.hub, held.item, held.token, done.response)
        except errors.LeaseLost:
            return
        self.awaits_event[held.item] = done.awaits_event

    async def abandon(self, kind: str, index: int) -> None:
        held = (self.episodes if kind == ORCHESTRATION else self.activities).pop(index)
        try:
            await self.replicas[held.replica].engine.dispatcher.abandon(self.hub, kind, held.item, held.token)
        except errors.LeaseLost:
            pass

    def lose(self, kind: str, index: int) -> None:
        """The worker holding the item vanished: its lease runs out."""
        (self.episodes if kind == ORCHESTRATION else self.activities).pop(index)

    async def claim_activity(self, r: int, index: int) -> None:
        queued = await self.queued("activities")
        if not queued:
            return
        item = queued[index % len(queued)]
        token = self._token(ACTIVITY, item)
        claimed = await self.replicas[r].engine.dispatcher.kinds[ACTIVITY].claim(self.hub, item, token, LEASE_MS)
        if claimed is not None:
            self.activities.append(Held(r, item, token, claimed[0]))

    async def complete_activity(self, index: int, fail: bool) -> None:
        held = self.activities.pop(index % len(self.activities))
        iid, _, task_id = parse_activity_item(held.item)
        response = pb.ActivityResponse(instanceId=iid, taskId=task_id, completionToken=held.token)
        if fail:
            response.failureDetails.CopyFrom(pb.TaskFailureDetails(errorType="Oops", errorMessage="failed"))
        else:
            response.result.value = '"r"'
        try:
            await self._orchs(held.replica).complete_activity(self.hub, held.item, held.token, response)
        except errors.LeaseLost:
            pass
