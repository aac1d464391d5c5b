"""Durable entities through the official SDK, differential: every scenario runs against this service
("ours", a server subprocess) and the SDK's in-memory backend ("reference", its own process), except
where the README's table of deliberate differences says they differ (``ours_only``).

Scenarios: function- and class-based entities, signals, GetEntity, calls with results and failures,
states of every JSON kind, queries, CleanEntityStorage, delayed signals, critical sections, entity
work-item filters, entities that signal entities and start orchestrations.
"""
from __future__ import annotations

import itertools
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task, worker
from durabletask.entities import DurableEntity, EntityContext, EntityInstanceId
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf.wrappers_pb2 import Int32Value, StringValue

from e2e_helpers import entity_worker, ours_only, poll, sdk_entities_on, sdk_stub, serve, stays

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus
STARTED: dict[str, threading.Event] = {}  # "hold" operations that have begun, by their input
GATES: dict[str, threading.Event] = {}  # what a "hold" operation waits for, by its input


def now() -> datetime:
    return datetime.now(timezone.utc)


def counter(ctx: EntityContext, value):
    op = ctx.operation
    if op == "add":
        ctx.set_state(ctx.get_state(int, 0) + value)
        return ctx.get_state()
    if op == "set":  # None deletes the state
        ctx.set_state(value)
    elif op == "get":
        return ctx.get_state()
    elif op == "fail":  # changes the state and signals, then raises: all of it is rolled back
        ctx.set_state("spoiled")
        ctx.signal_entity(EntityInstanceId("counter", value), "add", 1000)
        raise ValueError(f"refused {value}")
    elif op in ("stamp", "hold"):  # when it ran, on the worker's clock (the same host's clock as Redis)
        if op == "hold":  # keeps its batch out until the test opens the gate
            STARTED[value].set()
            assert GATES[value].wait(60), "the gate was never opened"
        ctx.set_state([*ctx.get_state(list, []), {"n": value if op == "stamp" else op, "at": now().isoformat()}])
    elif op == "later":  # an entity's own delayed signal
        ctx.signal_entity(ctx.entity_id, "stamp", "from-entity", signal_time=datetime.fromisoformat(value))
    elif op == "relay":
        ctx.signal_entity(EntityInstanceId("counter", value["to"]), "add", value["n"])
        ctx.schedule_new_orchestration("echo", input=value["n"], instance_id=value["iid"])
    return None


class Account(DurableEntity):
    def deposit(self, amount: int) -> int:
        self.set_state(self.get_state(int, 0) + amount)
        return self.get_state(int)

    def withdraw(self, amount: int) -> int:
        self.set_state(self.get_state(int, 0) - amount)
        if self.get_state(int) < 0:  # the change is rolled back with the failure
            raise ValueError("insufficient funds")
        return self.get_state(int)

    def balance(self) -> int:
        return self.get_state(int, 0)


class Ledger(DurableEntity):
    """A balance and the log of who read and wrote it, to see critical sections from the entity's side."""

    def _logged(self, kind: str, who: str, balance: int | None = None) -> int:
        s = self.get_state(dict, None) or {"balance": 0, "log": []}
        s["log"].append([kind, who])
        s["balance"] = s["balance"] if balance is None else balance
        self.set_state(s)
        return s["balance"]

    def read(self, who: str) -> int:
        return self._logged("r", who)

    def write(self, change: dict) -> None:
        self._logged("w", change["who"], change["balance"])


def echo(ctx: task.OrchestrationContext, value):
    return value


def banking(ctx: task.OrchestrationContext, key: str):
    acct = EntityInstanceId("Account", key)
    results = [(yield ctx.call_entity(acct, "deposit", 50)), (yield ctx.call_entity(acct, "withdraw", 20))]
    try:
        yield ctx.call_entity(acct, "withdraw", 1000)
    except task.TaskFailedError as e:
        results.append({"type": e.details.error_type, "message": e.details.message,
                        "inner": [e.details.inner_failure.error_type, e.details.inner_failure.message]})
    results.append((yield ctx.call_entity(acct, "balance")))
    return results


def reads(ctx: task.OrchestrationContext, keys: list):
    return (yield task.when_all([ctx.call_entity(EntityInstanceId("counter", k), "get") for k in keys]))


def signals_later(ctx: task.OrchestrationContext, key: str):
    at = ctx.current_utc_datetime + timedelta(seconds=1.5)
    ctx.signal_entity(EntityInstanceId("counter", key), "stamp", "from-orchestration", signal_time=at)
    return at.isoformat()


def transfer(ctx: task.OrchestrationContext, job: dict):
    """Inside one critical section over ``job["lock"]``: read every balance, then write two of them."""
    ids = [EntityInstanceId("ledger", k) for k in job["lock"]]
    with (yield ctx.lock_entities(ids)):
        balances = dict(zip(job["lock"], (yield task.when_all(
            [ctx.call_entity(i, "read", ctx.instance_id) for i in ids]))))
        src, dst, amount = job["src"], job["dst"], job["amount"]
        yield task.when_all([
            ctx.call_entity(EntityInstanceId("ledger", src), "write",
                            {"who": ctx.instance_id, "balance": balances[src] - amount}),
            ctx.call_entity(EntityInstanceId("ledger", dst), "write",
                            {"who": ctx.instance_id, "balance": balances[dst] + amount})])
    return amount


def holds_lock(ctx: task.OrchestrationContext, key: str):
    ledger = EntityInstanceId("ledger", key)
    with (yield ctx.lock_entities([ledger])):
        balance = yield ctx.call_entity(ledger, "read", ctx.instance_id)
        yield ctx.wait_for_external_event("release")
        yield ctx.call_entity(ledger, "write", {"who": ctx.instance_id, "balance": balance + 1})
    return "released"


ORCHESTRATORS = (echo, banking, reads, signals_later, transfer, holds_lock)
ENTITIES = (counter, Account, Ledger)


@pytest.fixture(params=["ours", "reference"])
def ent(request, replicas):
    with sdk_entities_on(serve(request.param, request, replicas), request.param,
                         orchestrators=ORCHESTRATORS, entities=ENTITIES) as c:
        yield c


def state_of(c: client.TaskHubGrpcClient, eid: EntityInstanceId):
    meta = c.get_entity(eid)
    return "<missing>" if meta is None else meta.get_typed_state()


def settled(c, eid, expected, timeout: float = 15):
    """Wait until the entity's state is ``expected`` (compared as JSON, so that False is not 0)."""
    poll(lambda: json.dumps(state_of(c, eid)) == json.dumps(expected), timeout, what=f"{eid} to hold {expected!r}")


def log_of(c, key: str) -> list | None:
    s = state_of(c, EntityInstanceId("ledger", key))
    return s["log"] if isinstance(s, dict) else None


def done(c, iid: str, timeout: float = 30) -> client.OrchestrationState:
    state = c.wait_for_orchestration_completion(iid, timeout=timeout)
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    return state


def test_client_signals_reach_a_function_entity_and_get_entity_reads_it_with_or_without_state(ent):
    eid = EntityInstanceId("counter", "signals")
    assert ent.get_entity(eid) is None
    for n in range(1, 6):
        ent.signal_entity(eid, "add", n)
    settled(ent, eid, 15)
    with_state, without = ent.get_entity(eid), ent.get_entity(eid, include_state=False)
    assert (with_state.includes_state, with_state.get_state(), with_state.backlog_queue_size) == (True, "15", 0)
    assert (without.includes_state, without.get_state(), str(without.id)) == (False, None, "@counter@signals")
    assert abs(with_state.last_modified - now()) < timedelta(seconds=30)
    assert ent.get_entity(EntityInstanceId("counter", "never")) is None


def test_calls_from_an_orchestration_return_values_and_a_failed_operation_raises_there(ent):
    done(ent, ent.schedule_new_orchestration(banking, input="acct-1"))
    out = done(ent, ent.schedule_new_orchestration(banking, input="acct-1")).get_output()
    assert out[:2] == [80, 60] and out[3] == 60, out  # the second run starts from the first one's 30
    failure = out[2]
    assert failure["type"].endswith("EntityOperationFailedException") and "insufficient funds" in failure["message"]
    assert failure["inner"][0].endswith("ValueError") and failure["inner"][1] == "insufficient funds"
    assert state_of(ent, EntityInstanceId("account", "acct-1")) == 60


def test_states_of_every_json_kind_are_kept_and_null_deletes_the_state(ent):
    values = [0, "", False, [], {}, 0.5, "text", [None, 1, [True]], {"k": {"n": None}}]
    ids = [EntityInstanceId("counter", f"kind-{i}") for i in range(len(values))]
    for eid, value in zip(ids, values):
        ent.signal_entity(eid, "set", value)
    for eid, value in zip(ids, values):
        settled(ent, eid, value)
        assert ent.get_entity(eid).get_state() == json.dumps(value)
    out = done(ent, ent.schedule_new_orchestration(reads, input=[eid.key for eid in ids])).get_output()
    assert json.dumps(out) == json.dumps(values), "results of calls that return falsy values"
    ent.signal_entity(ids[0], "set", None)
    poll(lambda: ent.get_entity(ids[0]).get_state() == "", 15, what="the state to be deleted")
    meta = ent.get_entity(ids[0])  # the entity stays, without state ("" from the SDK), until storage is cleaned
    assert meta is not None and meta.includes_state and meta.get_typed_state() is None


def test_deleting_state_and_cleaning_storage_removes_only_empty_entities(ent):
    keep, gone1 = EntityInstanceId("counter", "keep"), EntityInstanceId("counter", "gone-1")
    ent.signal_entity(keep, "set", 1)
    ent.signal_entity(gone1, "add", 5)
    ent.signal_entity(gone1, "set", None)
    ent.signal_entity(EntityInstanceId("Account", "gone-2"), "deposit", 3)
    ent.signal_entity(EntityInstanceId("Account", "gone-2"), "delete")  # DurableEntity.delete
    settled(ent, keep, 1)
    for eid in (gone1, EntityInstanceId("account", "gone-2")):
        poll(lambda: (m := ent.get_entity(eid)) and m.backlog_queue_size == 0 and m.get_state() == "", 15,
             what=f"{eid} to lose its state")
    result = ent.clean_entity_storage()
    assert (result.empty_entities_removed, result.orphaned_locks_released) == (2, 0)
    assert ent.get_entity(gone1) is None and ent.get_entity(EntityInstanceId("account", "gone-2")) is None
    assert state_of(ent, keep) == 1
    again = ent.clean_entity_storage()
    assert (again.empty_entities_removed, again.orphaned_locks_released) == (0, 0)


def test_queries_by_prefix_with_or_without_state_in_pages_and_by_last_modified(ent):
    first = [f"a-{i}" for i in range(7)]
    for i, key in enumerate(first):
        ent.signal_entity(EntityInstanceId("counter", key), "set", i)
    ent.signal_entity(EntityInstanceId("counter", "b-0"), "set", 99)
    ent.signal_entity(EntityInstanceId("Account", "a-9"), "deposit", 1)
    for key in first:
        settled(ent, EntityInstanceId("counter", key), first.index(key))
    settled(ent, EntityInstanceId("account", "a-9"), 1)
    found = ent.get_all_entities(client.EntityQuery(instance_id_starts_with="@counter@a-", page_size=3))
    assert [str(m.id) for m in found] == [f"@counter@{k}" for k in first]
    assert [m.get_typed_state() for m in found] == list(range(7))
    bare = ent.get_all_entities(client.EntityQuery(instance_id_starts_with="@counter@a-", include_state=False))
    assert len(bare) == 7 and all(m.get_state() is None and not m.includes_state for m in bare)
    pages, token = [], None
    with sdk_stub(ent.address) as stub:
        while True:
            q = pb.EntityQuery(instanceIdStartsWith=StringValue(value="@counter@"), includeState=True,
                               pageSize=Int32Value(value=3), continuationToken=token)
            reply = stub.QueryEntities(pb.QueryEntitiesRequest(query=q))
            pages.append([e.instanceId for e in reply.entities])
            if not reply.HasField("continuationToken") or not reply.continuationToken.value:
                break
            token = reply.continuationToken
            assert len(pages) < 10, pages
    assert [len(p) for p in pages] == [3, 3, 2], pages
    assert sum(pages, []) == [f"@counter@{k}" for k in [*first, "b-0"]]

    # last modified: [from, to) around a moment between two rounds of changes
    mark = now()
    poll(lambda: now() > mark + timedelta(milliseconds=5), 1)
    for key in ("a-1", "a-4"):
        ent.signal_entity(EntityInstanceId("counter", key), "add", 100)
    settled(ent, EntityInstanceId("counter", "a-4"), 104)
    settled(ent, EntityInstanceId("counter", "a-1"), 101)
    after = ent.get_all_entities(client.EntityQuery(instance_id_starts_with="@counter@a-", last_modified_from=mark))
    before = ent.get_all_entities(client.EntityQuery(instance_id_starts_with="@counter@a-", last_modified_to=mark))
    assert [m.id.key for m in after] == ["a-1", "a-4"]
    assert [m.id.key for m in before] == ["a-0", "a-2", "a-3", "a-5", "a-6"]


def stamps(c, eid, count: int, timeout: float = 15) -> dict[str, datetime]:
    got = poll(lambda: (s := state_of(c, eid)) != "<missing>" and s and len(s) >= count and s, timeout,
               what=f"{count} stamps on {eid}")
    assert len(got) == count, got
    return {s["n"]: datetime.fromisoformat(s["at"]) for s in got}


def test_delayed_signals_from_a_client_an_orchestration_and_an_entity_wait_for_their_time(ent):
    eid = EntityInstanceId("counter", "delayed")
    at = now() + timedelta(seconds=1.5)
    ent.signal_entity(eid, "stamp", "from-client", signal_time=at)
    ent.signal_entity(eid, "stamp", "at-once")
    queued = now()
    ent.signal_entity(eid, "later", (at + timedelta(seconds=0.5)).isoformat())
    orch_at = datetime.fromisoformat(done(ent, ent.schedule_new_orchestration(signals_later, input="delayed"))
                                     .get_output()).replace(tzinfo=timezone.utc)  # the SDK's clock is naive UTC
    ran = stamps(ent, eid, 4)
    if queued < at:  # (on a machine too slow to send one signal in 1.5 s, both were due at once)
        assert list(ran)[0] == "at-once", f"the signal due later went first: {ran}"
    if ent.backend == "reference":  # README: a timer thread per signal, not held to its time
        return
    lags = {"from-client": ran["from-client"] - at, "from-orchestration": ran["from-orchestration"] - orch_at,
            "from-entity": ran["from-entity"] - at - timedelta(seconds=0.5)}
    print(f"\ndelayed signals, ms from their time to the operation on the worker: "
          f"{ {k: round(v.total_seconds() * 1000, 1) for k, v in lags.items()} }")
    assert all(lag >= timedelta(0) for lag in lags.values()), f"a signal ran before its time: {lags}"
    assert all(lag < timedelta(seconds=3) for lag in lags.values()), f"a signal waited long after its time: {lags}"
    assert ent.get_entity(eid).last_modified >= at + timedelta(seconds=0.5) - timedelta(milliseconds=1)


def test_a_delayed_signal_that_comes_due_while_a_batch_runs_is_applied_after_it(ent, request):
    """The promoter finds the entity busy with a batch when the signal comes due: the signal must still be
    applied once that batch completes (it once stayed parked until the entity's next message)."""
    eid, key = EntityInstanceId("counter", "busy"), uuid.uuid4().hex
    STARTED[key], GATES[key] = threading.Event(), threading.Event()
    try:
        ent.signal_entity(eid, "hold", key)
        poll(STARTED[key].is_set, 15, what="the holding operation to start")
        at = now() + timedelta(milliseconds=300)
        ent.signal_entity(eid, "stamp", "delayed", signal_time=at)
        if ent.backend == "ours":  # the batch stays out until the promoter has taken the signal off the due set
            probe = request.getfixturevalue("probe")
            poll(lambda: probe.where_is(str(eid)).due_score is None, 15, what="the delayed signal to come due")
        else:
            poll(lambda: now() > at + timedelta(milliseconds=300), 5, what="the delayed signal's time")
    finally:
        GATES[key].set()
    ran = stamps(ent, eid, 2)
    assert list(ran) == ["hold", "delayed"]
    if ent.backend == "ours":
        assert ran["delayed"] >= at


def test_critical_sections_over_shared_entities_never_interleave_and_conserve_the_total(ent):
    for key in "abc":
        ent.signal_entity(EntityInstanceId("ledger", key), "write", {"who": "seed", "balance": 100})
    jobs = [{"lock": ["a", "b"], "src": "a", "dst": "b", "amount": 30},
            {"lock": ["b", "c"], "src": "b", "dst": "c", "amount": 20},
            {"lock": ["c", "a", "b"], "src": "c", "dst": "a", "amount": 50},
            {"lock": ["a", "c"], "src": "a", "dst": "c", "amount": 10},
            {"lock": ["b", "a", "c"], "src": "b", "dst": "a", "amount": 25},
            {"lock": ["a", "b", "c"], "src": "a", "dst": "b", "amount": 5}]
    ids = [ent.schedule_new_orchestration(transfer, input=job) for job in jobs]
    for iid in ids:
        done(ent, iid, timeout=60)
    finals = {k: state_of(ent, EntityInstanceId("ledger", k)) for k in "abc"}
    assert {k: s["balance"] for k, s in finals.items()} == {"a": 130, "b": 90, "c": 80}, finals
    for key, s in finals.items():
        log = s["log"][1:]  # after the seed
        blocks = [[who, [k for k, _ in run]] for who, run in itertools.groupby(log, key=lambda entry: entry[1])]
        assert sorted(who for who, _ in blocks) == sorted(i for i, j in zip(ids, jobs) if key in j["lock"]), \
            f"ledger {key}: critical sections interleaved: {log}"
        assert all(kinds in (["r"], ["r", "w"]) for _, kinds in blocks), log


def test_a_lock_request_waits_while_another_orchestration_holds_the_lock(ent):
    ledger = EntityInstanceId("ledger", "contended")
    first = ent.schedule_new_orchestration(holds_lock, input="contended")
    poll(lambda: log_of(ent, "contended") == [["r", first]], 15, what="the first critical section to read")
    second = ent.schedule_new_orchestration(holds_lock, input="contended")
    ent.wait_for_orchestration_start(second, timeout=15)
    stays(lambda: log_of(ent, "contended") == [["r", first]], 1.5, what="the lock of the first orchestration")
    assert ent.get_entity(ledger)._locked_by, "lockedBy is empty while the lock is held"  # its value: README
    ent.raise_orchestration_event(first, "release")
    assert done(ent, first).get_output() == "released"
    poll(lambda: log_of(ent, "contended")[-1] == ["r", second], 15, what="the second critical section")
    ent.raise_orchestration_event(second, "release")
    done(ent, second)
    assert log_of(ent, "contended") == [["r", first], ["w", first], ["r", second], ["w", second]]
    assert not ent.get_entity(ledger)._locked_by


def test_a_locked_entity_runs_only_its_holders_calls_and_others_wait_for_the_unlock(ent):
    ours_only(ent, "runs anyone's operations on a locked entity and names the critical section in lockedBy")
    ledger = EntityInstanceId("ledger", "held")
    holder = ent.schedule_new_orchestration(holds_lock, input="held")
    poll(lambda: log_of(ent, "held") == [["r", holder]], 15, what="the critical section to read")
    ent.signal_entity(ledger, "write", {"who": "client", "balance": 7})
    poll(lambda: ent.get_entity(ledger).backlog_queue_size == 1, 5, what="the signal to wait")
    stays(lambda: log_of(ent, "held") == [["r", holder]], 1.0, what="the held signal")
    assert ent.get_entity(ledger)._locked_by == holder
    ent.raise_orchestration_event(holder, "release")
    done(ent, holder)
    settled(ent, ledger, {"balance": 7, "log": [["r", holder], ["w", holder], ["w", "client"]]})


def test_clean_entity_storage_releases_the_lock_of_an_orchestration_that_ended_holding_it(ent):
    ours_only(ent, "names the critical section in lockedBy, so it cannot tell whether its holder ended")
    ledger = EntityInstanceId("ledger", "orphan")
    holder = ent.schedule_new_orchestration(holds_lock, input="orphan")
    poll(lambda: (m := ent.get_entity(ledger)) and m._locked_by == holder, 15, what="the lock")
    assert ent.clean_entity_storage().orphaned_locks_released == 0, "released the lock of a running holder"
    with sdk_stub(ent.address) as stub:  # ends it without its worker: nobody sends the unlock
        reply = stub.SkipGracefulOrchestrationTerminations(pb.SkipGracefulOrchestrationTerminationsRequest(
            instanceBatch=pb.InstanceBatch(instanceIds=[holder])))
    assert list(reply.unterminatedInstanceIds) == []
    assert ent.get_orchestration_state(holder).runtime_status == Status.TERMINATED
    waiter = ent.schedule_new_orchestration(holds_lock, input="orphan")
    ent.wait_for_orchestration_start(waiter, timeout=15)
    stays(lambda: ent.get_entity(ledger)._locked_by == holder, 1.0, what="the orphaned lock")
    result = ent.clean_entity_storage(remove_empty_entities=False)
    assert (result.empty_entities_removed, result.orphaned_locks_released) == (0, 1)
    poll(lambda: log_of(ent, "orphan")[-1] == ["r", waiter], 15, what="the waiting orchestration's lock")
    ent.raise_orchestration_event(waiter, "release")
    done(ent, waiter)


def marks(label: str):
    def mark(ctx: EntityContext, n):
        ctx.set_state([*ctx.get_state(list, []), [label, n]])
    return mark


@pytest.mark.parametrize("backend", ["ours", "reference"])
def test_entity_work_item_filters_keep_batches_away_from_workers_that_filter_the_entity_out(request, replicas,
                                                                                             backend):
    address = serve(backend, request, replicas)
    only = [worker.WorkItemFilters(entities=[worker.EntityWorkItemFilter(name)]) for name in ("alpha", "beta")]
    # Each worker could run both entities, but its filter names one: a batch it should not get would show
    # its label in the other entity's state.
    with entity_worker(address, entities=[("alpha", marks("A")), ("beta", marks("A-wrong"))], filters=only[0]), \
            entity_worker(address, entities=[("alpha", marks("B-wrong")), ("beta", marks("B"))], filters=only[1]):
        c = client.TaskHubGrpcClient(host_address=address)
        try:
            for n in range(10):
                c.signal_entity(EntityInstanceId("alpha", "x"), "mark", n)
                c.signal_entity(EntityInstanceId("beta", "x"), "mark", n)
            for name, label in (("alpha", "A"), ("beta", "B")):
                settled(c, EntityInstanceId(name, "x"), [[label, n] for n in range(10)])
        finally:
            c.close()


def test_entities_signal_entities_and_start_orchestrations(ent):
    hub, spoke = EntityInstanceId("counter", "hub"), EntityInstanceId("counter", "spoke")
    iid = f"echo-{uuid.uuid4().hex[:8]}"
    ent.signal_entity(hub, "relay", {"to": "spoke", "n": 5, "iid": iid})
    settled(ent, spoke, 5)
    assert done(ent, iid).get_output() == 5
    ent.signal_entity(hub, "set", "kept")
    ent.signal_entity(hub, "fail", "spoke")  # its signal to spoke (+1000) is rolled back with it
    then = f"echo-{uuid.uuid4().hex[:8]}"  # the hub's next signal to spoke goes after any earlier one
    ent.signal_entity(hub, "relay", {"to": "spoke", "n": 1, "iid": then})
    done(ent, then)
    settled(ent, spoke, 6)
    settled(ent, hub, "kept")
