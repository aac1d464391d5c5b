"""The race explorer's invariants, checked after every step against what is in Redis (and the model).

:func:`snapshot` reads the hub in one pipelined round trip (keys from scheduler/store/keys.py); the
checks are plain functions of the snapshot that return violations (text), so a failure says what is
wrong with which instance:

- liveness ("always a way forward", design.md): every non-terminal, non-suspended instance is ready,
  due, leased, or waits on something that exists and will deliver;
- exactly once: no history (with the inbox) holds one delivery twice;
- bookkeeping: the status counters and the indexes agree with the instances; nothing is left of an
  instance that is gone.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.protocol import ORCHESTRATION, TERMINAL, OutboxMessage, parse_activity_item
from scheduler.store.keys import lease_member, partition_of

from races_world import World

class Violation(AssertionError):
    """An invariant does not hold; each kind is its own class, so Hypothesis reports (and shrinks) each
    kind of violation apart."""


class StrandedTimer(Violation): ...
class InboxLeftBehind(Violation): ...
class NeverStarts(Violation): ...
class WaitsOnNothing(Violation): ...
class DeliveredTwice(Violation): ...


# one class per kind of delivery, so that one kind found twice does not hide another
TWICE = {what: type("".join(w.capitalize() for w in what.replace("'", "").split()) + "Twice", (DeliveredTwice,), {})
         for what in ("activity result", "timer fired", "termination", "child's end", "event")}
class CountersDisagree(Violation): ...
class IndexDisagrees(Violation): ...
class KeyLeftBehind(Violation): ...


# kinds not checked (comma-separated class names): to look for other races while a known one is fixed
IGNORED = set(filter(None, os.environ.get("DT_EXPLORE_IGNORE", "").split(",")))


def check(problems: list[tuple[type[Violation], str]]) -> None:
    """Raise the violation of the first kind found, saying every problem of that kind."""
    problems = [(kind, text) for kind, text in problems if kind.__name__ not in IGNORED]
    if problems:
        kind = problems[0][0]
        raise kind("\n".join(text for k, text in problems if k is kind))


PARTITION_KEYS = ("due", "ready", "leases", "by_created", "by_completed", "stats", "outbox", "activities",
                  "activity_payloads", "activity_tokens", "generation", "entities", "entity_index", "by_status", "relay")
INSTANCE_KEYS = ("instance", "inbox", "history", "timers", "seen")


@dataclass
class Snapshot:
    now_ms: int
    part: list[dict]  # per partition: name -> value
    inst: dict[str, dict]  # instance id -> {"hash", "inbox", "hist", "timers"}
    keys: set[str]  # every key of the hub


async def snapshot(world: World, ids: tuple[str, ...]) -> Snapshot:
    hub, redis = world.hub, world.redis
    async with redis.pipeline(transaction=False) as pipe:
        for pk in hub.all_partitions():
            pipe.zrange(pk.due, 0, -1, withscores=True)
            pipe.zrange(pk.ready, 0, -1)
            pipe.zrange(pk.leases, 0, -1, withscores=True)
            pipe.zrange(pk.by_created, 0, -1)
            pipe.zrange(pk.by_completed, 0, -1)
            pipe.hgetall(pk.stats)
            pipe.lrange(pk.outbox, 0, -1)
            pipe.hkeys(pk.activity_payloads)
            pipe.zrange(pk.activities, 0, -1)
            pipe.zrange(pk.by_status, 0, -1)
        for iid in ids:
            pk = hub.for_instance(iid)
            pipe.hgetall(pk.instance(iid))
            pipe.lrange(pk.inbox(iid), 0, -1)
            pipe.lrange(pk.history(iid), 0, -1)
            pipe.zrange(pk.timers(iid), 0, -1, withscores=True)
        replies = iter(await pipe.execute())
    part = []
    for _ in hub.all_partitions():
        due, ready, leases, created, completed, stats, outbox, payloads, queued, by_status = (next(replies)
                                                                                              for _ in range(10))
        part.append({"due": {m.decode(): int(s) for m, s in due}, "ready": {m.decode() for m in ready},
                     "leases": {m.decode(): int(s) for m, s in leases},
                     "by_created": {m.decode() for m in created}, "by_completed": {m.decode() for m in completed},
                     "stats": {k.decode(): int(v) for k, v in stats.items() if int(v) != 0},
                     "outbox": [OutboxMessage.decode(m) for m in outbox],
                     "payloads": [parse_activity_item(m.decode()) for m in payloads],
                     "activities": [m.decode() for m in queued],
                     "by_status": {(m.decode().split("|", 2)[0], m.decode().split("|", 2)[2]) for m in by_status}})
    inst = {}
    for iid in ids:
        h, inbox, hist, timers = (next(replies) for _ in range(4))
        inst[iid] = {"hash": {k.decode(): v for k, v in h.items()}, "inbox": inbox, "hist": hist,
                     "timers": [int(s) for _, s in timers]}
    found = set()
    for pattern in hub.scan_patterns():
        found |= {k.decode() async for k in redis.scan_iter(match=pattern, count=1000)}
    return Snapshot(world.now_ms, part, inst, found)


def anything(s: Snapshot, name: str) -> bool:
    """Whether any partition has something in ``name`` (ready, activities, outbox)."""
    return any(p[name] for p in s.part)


def due_now(s: Snapshot, name: str) -> bool:
    """Whether any partition has an entry of ``name`` (due, leases) whose time has come."""
    return any(score <= s.now_ms for p in s.part for score in p[name].values())


def status_of(s: Snapshot, iid: str) -> str | None:
    h = s.inst[iid]["hash"]
    return h["status"].decode() if "status" in h else None


def liveness(s: Snapshot, world: World) -> list[str]:
    problems = []
    outbox = [m for p in s.part for m in p["outbox"]]
    for iid, data in s.inst.items():
        status = status_of(s, iid)
        if status is None or status in TERMINAL or status == "SUSPENDED":
            continue
        h = data["hash"]
        p = s.part[_partition(world, iid)]
        ready, due = iid in p["ready"], p["due"].get(iid)
        leased = lease_member(ORCHESTRATION, iid) in p["leases"]
        timers = data["timers"]
        where = f"{iid} ({status}; now {s.now_ms}; timers {timers}; due {due}; ready {ready}; leased {leased})"
        if timers and not ready and not leased and (due is None or due > min(timers)):
            problems.append((StrandedTimer, f"a timer of {where} whose time has come is only in its timers zset: "
                             "the instance is not ready and its due entry is not due"))
        if status == "RUNNING" and data["inbox"] and not ready and not leased:
            problems.append((InboxLeftBehind, f"events wait in the inbox of {where}, which is neither ready nor leased"))
        if ready or leased or due is not None:
            continue
        if status == "PENDING":
            problems.append((NeverStarts, f"the pending instance {where} will never start"))
            continue
        execution = h.get("execution_id", b"").decode()
        activity = any(a_iid == iid and a_exec == execution for a_iid, a_exec, _ in p["payloads"])
        child = any(status_of(s, c) not in (None, *TERMINAL) and s.inst[c]["hash"].get("parent_instance_id") == iid.encode()
                    and s.inst[c]["hash"].get("parent_execution_id") == execution.encode() for c in s.inst)
        message = any(m.target == iid or (m.kind == "create" and _parent(m) == iid) for m in outbox)
        if not (activity or child or message or world.awaits_event.get(iid)):
            problems.append((WaitsOnNothing, f"{where} waits on nothing that exists: no activity, timer, child, "
                             "message or awaited event"))
    return problems


def _partition(world: World, iid: str) -> int:
    return partition_of(iid, world.hub.partitions)


def _parent(message: OutboxMessage) -> str:
    return pb.HistoryEvent.FromString(message.payload).executionStarted.parentInstance.orchestrationInstance.instanceId


def _deliveries(event: pb.HistoryEvent) -> tuple | None:
    """What one delivered event is, as the exactly-once check counts it."""
    kind = event.WhichOneof("eventType")
    if kind in ("taskCompleted", "taskFailed"):
        return "activity result", getattr(event, kind).taskScheduledId
    if kind == "timerFired":
        return "timer fired", event.timerFired.timerId
    if kind == "executionTerminated":
        return "termination", event.executionTerminated.input.value
    if kind in ("subOrchestrationInstanceCompleted", "subOrchestrationInstanceFailed"):
        return "child's end", getattr(event, kind).taskScheduledId
    if kind == "eventRaised":
        return "event", event.eventRaised.input.value
    return None


def exactly_once(s: Snapshot) -> list[str]:
    problems = []
    for iid, data in s.inst.items():
        counted = Counter(d for raw in [*data["hist"], *data["inbox"]]
                          if (d := _deliveries(pb.HistoryEvent.FromString(raw))) is not None)
        problems += [(TWICE[what], f"{iid} holds the {what} {which!r} {n} times")
                     for (what, which), n in counted.items() if n > 1]
    return problems


def bookkeeping(s: Snapshot, world: World) -> list[str]:
    problems = []
    hub = world.hub
    for p, pk in enumerate(hub.all_partitions()):
        mine = [iid for iid in s.inst if _partition(world, iid) == p and status_of(s, iid) is not None]
        counted = dict(Counter(status_of(s, iid) for iid in mine))
        if counted != s.part[p]["stats"]:
            problems.append((CountersDisagree, f"partition {p}: status counters {s.part[p]['stats']} but the instances are {counted}"))
        if s.part[p]["by_created"] != (set(mine) if hub.keeps_by_created else set()):
            problems.append((IndexDisagrees, f"partition {p}: by-created holds {sorted(s.part[p]['by_created'])}, instances "
                            f"are {sorted(mine)} (schema {hub.schema})"))
        indexed = {(status_of(s, iid), iid) for iid in mine} | {("*", iid) for iid in mine if hub.indexes_all}
        if s.part[p]["by_status"] != indexed:
            problems.append((IndexDisagrees, f"partition {p}: by-status holds {sorted(s.part[p]['by_status'])}, the "
                            f"instances are {sorted(indexed)}"))
        ended = {iid for iid in mine if status_of(s, iid) in TERMINAL}
        if s.part[p]["by_completed"] != ended:
            problems.append((IndexDisagrees, f"partition {p}: by-completed holds {sorted(s.part[p]['by_completed'])}, ended "
                            f"instances are {sorted(ended)}"))
    allowed = {hub.meta, world.clock_key}
    for pk in hub.all_partitions():
        allowed |= {getattr(pk, name) for name in PARTITION_KEYS}
    for iid in s.inst:
        if status_of(s, iid) is not None:
            pk = hub.for_instance(iid)
            allowed |= {getattr(pk, name)(iid) for name in INSTANCE_KEYS}
    problems += [(KeyLeftBehind, f"key {key} is left of an instance that is gone (or is unknown)") for key in sorted(s.keys - allowed)]
    return problems
