"""``kill -9`` of a replica loses no acknowledged start, half-writes nothing and leaves nothing stuck."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from durabletask import client

from e2e_helpers import due_ms, poll

pytestmark = pytest.mark.e2e

TOTAL = 2000
KILL_AFTER = 400  # acknowledged starts before replica A is killed


def _iid(n: int) -> str:
    return f"burst-{n:05d}"


def test_kill_one_replica_during_a_burst_of_starts(replicas, probe, hub_keys, rds):
    a, b = replicas.start(), replicas.start()
    clients = {"A": client.TaskHubGrpcClient(host_address=a.address),
               "B": client.TaskHubGrpcClient(host_address=b.address)}
    acked: dict[int, str] = {}
    failed: dict[int, tuple[str, grpc.StatusCode]] = {}
    lock = threading.Lock()

    def start(n: int) -> None:
        replica = "AB"[n % 2]
        try:
            clients[replica].schedule_new_orchestration("Burst", input={"n": n}, instance_id=_iid(n))
        except grpc.RpcError as exc:
            with lock:
                failed[n] = (replica, exc.code())
            return
        with lock:
            acked[n] = replica

    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(start, n) for n in range(TOTAL)]
            poll(lambda: len(acked) >= KILL_AFTER, timeout=30, interval=0.001, what=f"{KILL_AFTER} acks")
            a.kill()
            killed_at = len(acked)
            for f in futures:
                f.result()
    finally:
        for c in clients.values():
            c.close()

    assert len(acked) + len(failed) == TOTAL
    assert killed_at < TOTAL - 200, "the kill came too late to interrupt the burst"
    failures_by_replica = {r for r, _ in failed.values()}
    assert failures_by_replica <= {"A"}, f"replica B failed calls: {[v for v in failed.values() if v[0] == 'B']}"
    codes = {code for _, code in failed.values()}
    assert codes <= {grpc.StatusCode.UNAVAILABLE}, f"unexpected failure codes: {codes}"
    assert len(failed) > 100, "calls to the killed replica should have failed"
    assert sum(1 for r in acked.values() if r == "A") > 50, "replica A acknowledged too little before the kill"

    # Every acknowledged start is readable through the survivor, with its name and input.
    survivor = client.TaskHubGrpcClient(host_address=b.address)
    try:
        with ThreadPoolExecutor(8) as pool:
            states = dict(zip(acked, pool.map(survivor.get_orchestration_state, map(_iid, acked))))
    finally:
        survivor.close()
    missing = sorted(n for n, s in states.items() if s is None)
    assert not missing, f"{len(missing)} acknowledged starts were lost, e.g. {[_iid(n) for n in missing[:5]]}"
    for n, state in states.items():
        assert (state.name, state.get_input(), state.runtime_status) == \
            ("Burst", {"n": n}, client.OrchestrationStatus.PENDING), _iid(n)

    # Atomicity: an instance exists with all its parts, or not at all (a failed call may or may not
    # have been applied before the kill, but never half).
    pipe = rds.pipeline(transaction=False)
    for n in range(TOTAL):
        pk, iid = hub_keys.for_instance(_iid(n)), _iid(n)
        pipe.hmget(pk.instance(iid), "status", "name", "execution_id", "created_ms")
        pipe.llen(pk.inbox(iid))
        pipe.zscore(pk.ready, iid)
    rows = pipe.execute()
    existing = set()
    for n in range(TOTAL):
        fields, inbox, ready = rows[3 * n: 3 * n + 3]
        if fields[0] is None:
            assert (fields, inbox, ready) == ([None] * 4, 0, None), f"half-written {_iid(n)}"
            continue
        existing.add(n)
        assert fields[0] == b"PENDING" and fields[1] == b"Burst" and fields[2] and fields[3], _iid(n)
        assert inbox == 1 and ready is not None, _iid(n)
        # its member of the status index, "<status>|<created ms, 16 digits>|<id>" (lua/prelude.lua)
        member = f"PENDING|{int(fields[3]):016d}|{_iid(n)}"
        assert rds.zscore(hub_keys.for_instance(_iid(n)).by_status, member) is not None, _iid(n)
    assert set(acked) <= existing
    assert probe.status_counts() == {"PENDING": len(existing)}, "per-status counters disagree with the instances"
    indexed = sum(rds.zcard(pk.by_status) for pk in hub_keys.all_partitions())
    assert len(probe.zset("ready")) == len(existing) == indexed


def test_delayed_starts_accepted_by_a_killed_replica_are_promoted_by_the_survivor(replicas, probe):
    a, b = replicas.start(), replicas.start()
    start_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    ca = client.TaskHubGrpcClient(host_address=a.address)
    try:
        for n in range(200):
            ca.schedule_new_orchestration("Orphan", input=n, instance_id=f"orphan-{n}",
                                          start_at=start_at + timedelta(milliseconds=n))
    finally:
        ca.close()
    a.kill()
    queues = probe.queues()
    assert queues.now_ms < due_ms(start_at) and (queues.due, queues.ready) == (200, 0), queues

    last_due = due_ms(start_at + timedelta(milliseconds=199))
    done = poll(lambda: (q := probe.queues()).due == 0 and q, timeout=15, interval=0.005,
                what="the surviving replica to promote everything")
    assert done.ready == 200 and done.ready_in_future == 0
    assert done.now_ms - last_due < 1000, f"the last entry was promoted {done.now_ms - last_due} ms late"
    assert probe.zset("ready") == {f"orphan-{n}": due_ms(start_at + timedelta(milliseconds=n)) for n in range(200)}
    with client.TaskHubGrpcClient(host_address=b.address) as cb:
        assert cb.get_orchestration_state("orphan-7").get_input() == 7
