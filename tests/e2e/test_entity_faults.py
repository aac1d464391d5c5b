"""Entities across replicas and through faults (this service only).

- The client on replica A, the orchestrations' worker on replica B and the entities' worker on replica C
  (work-item filters keep each kind on its worker), on one Redis and on a three-node Redis Cluster:
  signals, calls with results, a critical section over two entities, a delayed signal.
- ``kill -9`` of a worker process while it runs a batch, and ``kill -9`` of the replica that handed the
  batch out (the worker reconnects to another replica through a TCP proxy, like a Service): the
  ``journal`` entity appends each operation's number to its state, so a lost operation or one applied
  twice shows in the list. A journal operation whose number has a ``block-<n>`` marker file waits for a
  ``release`` file (and reports each execution with a ``reached-<n>-*`` file).

Run as a script (``python test_entity_faults.py ADDRESS MARKER_DIR``) this module is the worker that
the tests kill.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task, worker
from durabletask.entities import EntityContext, EntityInstanceId
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf.wrappers_pb2 import StringValue

from e2e_helpers import TcpProxy, entity_worker, poll, scrape_samples, sdk_stub, stays
from scheduler.testing import ServerProcess, redis_cluster, start_server

pytestmark = pytest.mark.e2e

LEASE = ("--lease-seconds", "2", "--health-ping-seconds", "0.5")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKS: str | None = None  # the marker directory of a worker process


def journal(ctx: EntityContext, n: int) -> int:
    if MARKS and os.path.exists(os.path.join(MARKS, f"block-{n}")):
        open(os.path.join(MARKS, f"reached-{n}-{uuid.uuid4().hex}"), "w").close()
        while not os.path.exists(os.path.join(MARKS, "release")):
            time.sleep(0.01)
    ctx.set_state([*ctx.get_state(list, []), n])
    return len(ctx.get_state(list))


def caller(ctx: task.OrchestrationContext, job: dict):
    eid = EntityInstanceId(job.get("entity", "journal"), job["key"])
    results = []
    for n in job["numbers"]:
        results.append((yield ctx.call_entity(eid, "append", n)))
    return results


def locker(ctx: task.OrchestrationContext, keys: list):
    ids = [EntityInstanceId("labelled", k) for k in keys]
    with (yield ctx.lock_entities(ids)):
        got = yield task.when_all([ctx.call_entity(i, "append", ctx.instance_id) for i in ids])
    return got


def labelled(label: str):
    def entity(ctx: EntityContext, item):
        ctx.set_state([*ctx.get_state(list, []), [label, item, datetime.now(timezone.utc).isoformat()]])
        return len(ctx.get_state(list))
    return entity


def start_worker(address: str, marks: str) -> subprocess.Popen:
    """A worker process (this module run as a script); its log goes to ``worker-<n>.log`` in ``marks``."""
    log = os.path.join(marks, f"worker-{sum(1 for f in os.listdir(marks) if f.startswith('worker-'))}.log")
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), address, marks], stdout=subprocess.PIPE,
                                stderr=err, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.stdout.readline().strip() == "WORKER READY"
    return proc


def reached(marks: str, n: int) -> int:
    return sum(1 for name in os.listdir(marks) if name.startswith(f"reached-{n}-"))


@pytest.fixture
def marks(tmp_path) -> str:
    (tmp_path / "block-10").touch()
    return str(tmp_path)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def load_journal(c: client.TaskHubGrpcClient, key: str) -> str:
    """30 signals, then an orchestration that calls 100..104: all queued before any worker runs."""
    for n in range(30):
        c.signal_entity(EntityInstanceId("journal", key), "append", n)
    return c.schedule_new_orchestration(caller, input={"key": key, "numbers": list(range(100, 105))})


def journal_is_whole(c: client.TaskHubGrpcClient, key: str, orchestration: str) -> None:
    state = c.wait_for_orchestration_completion(orchestration, timeout=60)
    assert state.runtime_status == client.OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == [31, 32, 33, 34, 35]
    expected = [*range(30), *range(100, 105)]
    got = poll(lambda: (m := c.get_entity(EntityInstanceId("journal", key))) and len(m.get_typed_state()) >= 35
               and m.get_typed_state(), 30, what="every operation")
    assert got == expected, f"lost: {sorted(set(expected) - set(got))}, twice: {[n for n in expected if got.count(n) > 1]}"


def test_a_worker_killed_in_the_middle_of_a_batch_loses_no_operation_and_applies_none_twice(
        replicas, marks, procs, rds, hub_keys):
    server = replicas.start(*LEASE)
    c = client.TaskHubGrpcClient(host_address=server.address)
    try:
        iid = load_journal(c, "k1")
        procs.append(start_worker(server.address, marks))
        poll(lambda: reached(marks, 10) == 1, 30, what="the batch to reach operation 10")
        ek = hub_keys.for_instance("@journal@k1").entity("@journal@k1")
        assert rds.hget(ek.hash, "lease") and int(rds.hget(ek.hash, "claimed_n")) >= 30, "one batch of them all"
        procs[0].kill()  # SIGKILL with operations 0..9 run and not reported
        procs[0].wait(10)
        open(os.path.join(marks, "release"), "w").close()
        procs.append(start_worker(server.address, marks))
        ready = time.monotonic()
        journal_is_whole(c, "k1", iid)
        assert reached(marks, 10) == 2, "the batch ran again whole, once"
        # handed back when the dead worker's stream closed, at the latest when its lease (2 s) expired
        assert time.monotonic() - ready < 2 + 10
    finally:
        c.close()


def test_a_replica_killed_while_its_worker_runs_a_batch_loses_nothing_and_the_late_result_is_refused(
        replicas, marks, procs, rds, hub_keys):
    a, b = replicas.start(*LEASE), replicas.start(*LEASE, metrics=True)
    proxy = TcpProxy(a.address)
    c = client.TaskHubGrpcClient(host_address=b.address)
    try:
        iid = load_journal(c, "k2")
        procs.append(start_worker(proxy.address, marks))
        poll(lambda: reached(marks, 10) == 1, 30, what="the batch to reach operation 10")
        proxy.target = b.address  # connections from now on go to B (a reconnection can never reach dead A)
        a.kill()  # the lease of the batch now expires; the worker's first run of it is still going
        proxy.retarget(b.address)
        # The worker reconnects through B and gets the batch again once its lease expired (swept by B).
        poll(lambda: reached(marks, 10) == 2, 30, what="the batch to be handed out again")
        open(os.path.join(marks, "release"), "w").close()  # both runs finish; only the current claim counts
        journal_is_whole(c, "k2", iid)
        assert reached(marks, 10) == 2, "the batch ran a third time"
        ek = hub_keys.for_instance("@journal@k2").entity("@journal@k2")
        assert rds.hget(ek.hash, "lease") is None
        # The first run's result (under the claim A handed out) reached B and was refused.
        poll(lambda: scrape_samples(replicas.metrics_port(b), "dt_rpc_requests_total", method="CompleteEntityTask",
                                    code="FAILED_PRECONDITION") == 1, 10, what="the late result to be refused")
    finally:
        c.close()
        proxy.close()


def test_a_signal_retried_with_its_request_id_on_any_replica_is_applied_once(replicas):
    a, b = replicas.start(*LEASE), replicas.start(*LEASE)
    eid = EntityInstanceId("journal", "retried")

    def signal(address: str, n: int, request_id: str) -> None:
        with sdk_stub(address) as stub:  # what a client does again after DEADLINE_EXCEEDED or UNAVAILABLE
            stub.SignalEntity(pb.SignalEntityRequest(instanceId=str(eid), name="append", input=StringValue(
                value=str(n)), requestId=request_id))

    with entity_worker(b.address, entities=(journal,)), client.TaskHubGrpcClient(host_address=a.address) as c:
        for address in (a.address, a.address, b.address):
            signal(address, 7, "request-1")
        signal(b.address, 8, "request-2")
        poll(lambda: (m := c.get_entity(eid)) and m.get_typed_state() == [7, 8], 15, what="both signals")
        stays(lambda: c.get_entity(eid).get_typed_state() == [7, 8], 1.0, what="one application of each")


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster() as url:
        yield url


@pytest.fixture(params=["redis", "cluster"])
def three(request, replicas, key_prefix, hub_name) -> Iterator[list[ServerProcess]]:
    """Replicas A, B and C on one Redis or on a three-node Redis Cluster (16 partitions)."""
    if request.param == "redis":
        yield [replicas.start(*LEASE) for _ in range(3)]
        return
    url = request.getfixturevalue("cluster_url")
    args = ("--redis-cluster", "--key-prefix", key_prefix, "--task-hub", hub_name, "--partitions", "16", *LEASE)
    servers = [start_server(url, *args) for _ in range(3)]
    yield servers
    assert [s.stop(8.0) for s in servers] == [0, 0, 0]


def test_client_orchestrations_and_entities_each_on_their_own_replica(three):
    a, b, c_ = three
    only = worker.WorkItemFilters
    orchestrations = only(orchestrations=[worker.OrchestrationWorkItemFilter(n) for n in ("caller", "locker")])
    entities = only(entities=[worker.EntityWorkItemFilter("labelled")])
    # Either worker could run either kind; the filters keep orchestrations on B and entities on C, and the
    # label an entity writes says which worker ran its operation.
    with entity_worker(b.address, orchestrators=(caller, locker), entities=[("labelled", labelled("B"))],
                       filters=orchestrations), \
            entity_worker(c_.address, orchestrators=(caller, locker), entities=[("labelled", labelled("C"))],
                          filters=entities), \
            client.TaskHubGrpcClient(host_address=a.address) as c:
        keys = [f"k{i}" for i in range(8)]  # spread over the partitions (and the Cluster's nodes)
        at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        c.signal_entity(EntityInstanceId("labelled", "k0"), "append", "delayed", signal_time=at)
        for key in keys:
            c.signal_entity(EntityInstanceId("labelled", key), "append", "signal")
        calls = [c.schedule_new_orchestration(caller, input={"entity": "labelled", "key": key, "numbers": [1, 2]})
                 for key in keys]
        locks = [c.schedule_new_orchestration(locker, input=[keys[i], keys[(i + 3) % 8]]) for i in range(8)]
        for iid in [*calls, *locks]:
            state = c.wait_for_orchestration_completion(iid, timeout=60)
            assert state.runtime_status == client.OrchestrationStatus.COMPLETED, (iid, state.failure_details)
        outputs = [c.get_orchestration_state(i).get_output() for i in calls]
        assert all(len(out) == 2 and 0 < out[0] < out[1] for out in outputs), outputs  # results came back

        def entries(key: str) -> list:
            return c.get_entity(EntityInstanceId("labelled", key)).get_typed_state()

        poll(lambda: len(entries("k0")) == 6, 15, what="the delayed signal")
        for i, key in enumerate(keys):
            got = entries(key)
            assert {label for label, _, _ in got} == {"C"}, f"{key} ran on the orchestrations' worker: {got}"
            assert sorted(str(item) for _, item, _ in got if item not in ("delayed",)) == sorted(
                ["signal", "1", "2", locks[i], locks[(i - 3) % 8]]), got
        # Never early; how late depends on the critical sections that hold k0 when it comes due.
        delayed = [datetime.fromisoformat(t) for _, item, t in entries("k0") if item == "delayed"]
        assert len(delayed) == 1 and delayed[0] >= at, (delayed, at)


if __name__ == "__main__":
    MARKS = sys.argv[2]
    w = worker.TaskHubGrpcWorker(host_address=sys.argv[1])
    w.add_orchestrator(caller)
    w.add_entity(journal)
    w.start()
    print("WORKER READY", flush=True)
    threading.Event().wait()
