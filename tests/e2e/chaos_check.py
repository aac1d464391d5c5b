"""What a chaos soak must end with, checked through the SDK client (and Redis, read-only, to diagnose):

- every started ``chaos_parent`` is COMPLETED with the output its seed implies, and each of its
  sub-orchestrations with its own (lost: no instance; stuck: not terminal by the deadline);
- no history (the final execution of a parent, each child) holds a second completion of one
  ``taskScheduledId``, a second ``timerFired`` of one timer, a second result of one entity request, a
  second ``executionStarted``/``executionCompleted``, or an event ``go-<r>`` twice (unless the driver's
  raise of it was tried again with an unknown outcome);
- each counter entity applied exactly the operations the orchestrations sent, each once (its state
  counts every operation id), and every call saw its own operation applied once.
"""
from __future__ import annotations

import collections
import time

import redis
from durabletask import client
from durabletask.entities import EntityInstanceId
from durabletask.internal import orchestrator_service_pb2 as pb

from chaos_app import COUNTERS, ROUNDS, expected_output, op_ids
from scheduler.store.keys import HubKeys

TERMINAL = (client.OrchestrationStatus.COMPLETED, client.OrchestrationStatus.FAILED,
            client.OrchestrationStatus.TERMINATED)
COMPLETED = client.OrchestrationStatus.COMPLETED


def history(caller, iid: str) -> list[pb.HistoryEvent]:
    chunks, _ = caller.call(lambda c: list(c._stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(
        instanceId=iid))))
    return [e for chunk in chunks for e in chunk.events]


def duplicates(events: list[pb.HistoryEvent], raised_twice_ok: set[str]) -> list[str]:
    """What a history holds twice (or holds without its cause)."""
    seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    scheduled, timers, subs, calls = set(), set(), set(), set()
    for e in events:
        kind = e.WhichOneof("eventType")
        if kind == "taskScheduled":
            scheduled.add(e.eventId)
        elif kind == "timerCreated":
            timers.add(e.eventId)
        elif kind == "subOrchestrationInstanceCreated":
            subs.add(e.eventId)
        elif kind == "entityOperationCalled":
            calls.add(getattr(e, kind).requestId)
        if kind in ("taskCompleted", "taskFailed", "subOrchestrationInstanceCompleted",
                    "subOrchestrationInstanceFailed"):
            seen[kind][getattr(e, kind).taskScheduledId] += 1
        elif kind == "timerFired":
            seen[kind][e.timerFired.timerId] += 1
        elif kind in ("entityOperationCompleted", "entityOperationFailed"):
            seen["entity result"][getattr(e, kind).requestId] += 1
        elif kind in ("executionStarted", "executionCompleted"):
            seen[kind][""] += 1
        elif kind == "eventRaised":
            seen["eventRaised"][e.eventRaised.name] += 1
    found = [f"{kind} {key!r} x{n}" for kind, counter in seen.items() for key, n in counter.items()
             if n > 1 and not (kind == "eventRaised" and key in raised_twice_ok)]
    found += [f"{kind} {key} without its cause" for kind, causes in (
        ("taskCompleted", scheduled), ("taskFailed", scheduled), ("timerFired", timers),
        ("subOrchestrationInstanceCompleted", subs)) for key in seen.get(kind, {}) if key not in causes]
    return found


def wait_terminal(caller, iids: list[str], seconds: float) -> dict:
    """The last state of each instance, polled until all are terminal or ``seconds`` pass."""
    states, pending = {}, list(iids)
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        for iid in list(pending):
            states[iid], _ = caller.call(lambda c: c.get_orchestration_state(iid))
            if states[iid] is not None and states[iid].runtime_status in TERMINAL:
                pending.remove(iid)
        if pending:
            time.sleep(0.5)
    return states


def check_instance(caller, iid: str, state, ambiguous: set[str]) -> list[str]:
    seed = int(iid.rsplit("-", 1)[1])
    if state is None:
        return ["lost: no such instance"]
    if state.runtime_status not in TERMINAL:
        return [f"stuck: {state.runtime_status.name}, custom status {state.get_custom_status()!r}"]
    if state.runtime_status != COMPLETED:
        return [f"{state.runtime_status.name}: {state.failure_details}"]
    problems = []
    got, want = state.get_output(), expected_output(seed)
    if got != want:
        problems.append(f"wrong output: got {got}, want {want}")
    problems += [f"history: {d}" for d in duplicates(history(caller, iid), ambiguous)]
    for r in range(ROUNDS):
        child = f"{iid}-child{r}"
        cstate, _ = caller.call(lambda c: c.get_orchestration_state(child))
        if cstate is None or cstate.runtime_status != COMPLETED or cstate.get_output() != (seed + r) ** 2 + 1:
            problems.append(f"child {child}: {cstate and (cstate.runtime_status.name, cstate.get_output())}")
        elif found := duplicates(history(caller, child), set()):
            problems.append(f"child {child} history: {found}")
    return problems


def entity_problems(caller, completed: list[str], unfinished: list[str], seconds: float) -> tuple[list[str], int, int]:
    """(problems, operations lost, operations applied more than once) of the counters: every operation of a
    completed instance applied once; those of an unfinished one (it may not have sent them) at most once."""
    want: dict[str, dict[str, int]] = {f"c{k}": {} for k in range(COUNTERS)}
    maybe: set[str] = set()
    for iid in [*completed, *unfinished]:
        seed = int(iid.rsplit("-", 1)[1])
        for r in range(ROUNDS):
            if iid in unfinished:
                maybe.update(op for op, _ in op_ids(iid, r))
            else:
                want[f"c{seed % COUNTERS}"].update(op_ids(iid, r))
    deadline = time.monotonic() + seconds
    while True:  # delayed signals may still be on their way
        states = {}
        for key in want:
            meta, _ = caller.call(lambda c: c.get_entity(EntityInstanceId("chaos_counter", key)))
            states[key] = (meta and meta.get_typed_state()) or {"total": 0, "ops": {}}
        if all(set(want[k]) <= set(states[k]["ops"]) for k in want) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems, lost, twice = [], 0, 0
    for key, ops in want.items():
        got = states[key]["ops"]
        missing = sorted(set(ops) - set(got))
        doubled = {op: n for op, n in got.items() if n != 1}
        extra = sorted(set(got) - set(ops) - maybe)
        lost, twice = lost + len(missing), twice + len(doubled)
        amounts = {op: v for iid in [*completed, *unfinished] for r in range(ROUNDS) for op, v in op_ids(iid, r)}
        total = sum(amounts.get(o, 0) * n for o, n in got.items())
        if missing or doubled or extra or states[key]["total"] != total:
            problems.append(f"counter {key}: lost {missing[:10]}, applied more than once {doubled}, "
                            f"unexpected {extra[:10]}, total {states[key]['total']} (from its ops: {total})")
    return problems, lost, twice


def diagnose(caller, rds: redis.Redis, hub: HubKeys, iid: str) -> dict:
    """Where a stuck instance sits: its hash, its place in the queues, leases and due set, its pending timers
    (a timer pending with no due entry will never fire), its history's tail."""
    pk = hub.for_instance(iid)
    text = lambda b: b.decode(errors="replace")[:200] if isinstance(b, bytes) else b  # noqa: E731
    fields = {text(k): text(v) for k, v in rds.hgetall(pk.instance(iid)).items() if k not in (b"input", b"output")}
    marks = {name: [(text(m), s) for m, s in rds.zrange(key, 0, -1, withscores=True) if iid.encode() in m]
             for name, key in (("ready", pk.ready), ("due", pk.due), ("leases", pk.leases))}
    tail = []
    for e in history(caller, iid)[-14:]:
        kind = e.WhichOneof("eventType")
        body = str(getattr(e, kind)).replace("\n", " ")[:120]
        tail.append(f"#{e.eventId} {e.timestamp.ToJsonString()} {kind} {body}")
    timers = [s for _, s in rds.zrange(pk.timers(iid), 0, -1, withscores=True)]  # pending timers' fire times
    return {"hash": fields, **marks, "pending timers (ms)": timers, "inbox": rds.llen(pk.inbox(iid)), "outbox": rds.type(pk.outbox).decode(),
            "redis_time": rds.time(), "history_tail": tail}


def diagnose_entity(rds: redis.Redis, hub: HubKeys, key: str, lost: list[str]) -> dict:
    """Where the lost operations of a counter are (if anywhere): each of its keys, with the members that name one."""
    eid = f"@chaos_counter@{key}"
    pk = hub.for_instance(eid)
    found: dict[str, object] = {"due entries": [m.decode(errors="replace")[:160] for m in rds.zrange(pk.due, 0, -1)
                                                if eid.encode() in m]}
    for name, k in zip(("hash", "ops", "held", "later", "seen"), (lambda e: (e.hash, e.ops, e.held, e.later,
                                                                             e.seen))(pk.entity(eid))):
        kind = rds.type(k).decode()
        items = {"hash": lambda: [f"{f.decode()}={v[:80]!r}" for f, v in rds.hgetall(k).items() if f != b"state"],
                 "list": lambda: rds.lrange(k, 0, -1), "zset": lambda: rds.zrange(k, 0, -1),
                 "set": lambda: list(rds.smembers(k))}.get(kind, lambda: [])()
        named = [str(i)[:160] for i in items if any(op.encode() in (i if isinstance(i, bytes) else i.encode())
                                                    for op in lost)]
        found[name] = {"type": kind, "size": len(items), "naming a lost op": named[:5],
                       **({"fields": items} if kind == "hash" else {})}
    return found


def check(caller, cluster, prefix: str, hub_name: str, iids: list[str], record: dict, settle: float, log) -> dict:
    started = record["started"]
    t = time.monotonic()
    states = wait_terminal(caller, started, settle)
    log(f"waited {time.monotonic() - t:.0f}s for the instances to end")
    ambiguous = collections.defaultdict(set)
    for iid, r, _ in record["ambiguous_raises"]:
        ambiguous[iid].add(f"go-{r}")
    problems = {iid: p for iid in started if (p := check_instance(caller, iid, states.get(iid), ambiguous[iid]))}
    completed = [i for i in started if states.get(i) is not None and states[i].runtime_status == COMPLETED]
    entity, lost_ops, twice_ops = entity_problems(caller, completed, [i for i in started if i not in completed], 15.0)
    stuck = [i for i, p in problems.items() if p[0].startswith("stuck")]
    diagnoses = {}
    rds = redis.Redis.from_url(cluster.redis.url)
    try:
        for iid in stuck[:8]:
            diagnoses[iid] = diagnose(caller, rds, HubKeys(prefix, hub_name, 4), iid)
        for problem in entity[:4]:
            key = problem.split(":", 1)[0].split()[-1]
            lost = [x.strip(" '") for x in problem.split("lost [", 1)[1].split("]", 1)[0].split(",") if x.strip()]
            diagnoses[f"counter {key}"] = diagnose_entity(rds, HubKeys(prefix, hub_name, 4), key, lost)
    finally:
        rds.close()
    return {
        "instances": len(iids), "started": len(started),
        "completed_correctly": len(started) - len(problems),
        "lost": sum(1 for p in problems.values() if p[0].startswith("lost")) + len(record["start_failed"]),
        "stuck": len(stuck),
        "failed": sum(1 for p in problems.values() if p[0].startswith(("FAILED", "TERMINATED"))),
        "wrong": sum(1 for p in problems.values() if any(x.startswith(("wrong", "child ")) for x in p)),
        "duplicates": sum(1 for p in problems.values() for x in p if "history" in x) + twice_ops,
        "entity_ops_lost": lost_ops, "entity_ops_applied_twice": twice_ops,
        "raises_retried": len(record["ambiguous_raises"]), "raises_failed": record["raise_failed"],
        "start_failed": record["start_failed"],
        "problems": problems, "entity_problems": entity, "diagnoses": diagnoses,
    }


def ok(report: dict) -> bool:
    return (report["completed_correctly"] == report["instances"] == report["started"] and not report["entity_problems"]
            and not report["raises_failed"])
