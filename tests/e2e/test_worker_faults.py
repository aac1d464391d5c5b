"""A worker killed with SIGKILL mid-activity: its work is handed out again once its lease expires."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from durabletask import client

from e2e_helpers import poll

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 2.0
WORKER = os.path.join(os.path.dirname(__file__), "worker_proc.py")


def start_worker(address: str, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, WORKER, address, mode], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == "WORKER READY"
    return proc


def test_work_of_a_killed_worker_completes_on_another(replicas, rds, hub_keys):
    server = replicas.start("--lease-seconds", str(LEASE_SECONDS), "--health-ping-seconds", "0.5")
    c = client.TaskHubGrpcClient(host_address=server.address)
    first = start_worker(server.address, "hang")
    second = None
    try:
        iid = c.schedule_new_orchestration("two_steps", input=41)
        leases = hub_keys.for_instance(iid).leases

        def activity_claimed() -> bool:
            return any(m.startswith(b"a|") for m in rds.zrange(leases, 0, -1))

        poll(activity_claimed, timeout=30, what="the first worker to claim the activity")
        first.kill()  # SIGKILL: no chance to hand anything back
        first.wait(10)
        killed_at = time.monotonic()
        second = start_worker(server.address, "quick")
        state = c.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == client.OrchestrationStatus.COMPLETED
        assert state.serialized_output == "42"
        assert time.monotonic() - killed_at < LEASE_SECONDS + 5  # the lease time plus a margin
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        c.close()


def test_work_held_through_a_killed_replica_is_swept_and_completed_elsewhere(replicas, rds, hub_keys):
    lease = ("--lease-seconds", str(LEASE_SECONDS), "--health-ping-seconds", "0.5")
    a, b = replicas.start(*lease), replicas.start(*lease)
    c = client.TaskHubGrpcClient(host_address=b.address)
    on_a = start_worker(a.address, "hang")  # holds the activity through replica A
    on_b = None
    try:
        iid = c.schedule_new_orchestration("two_steps", input=1)
        leases = hub_keys.for_instance(iid).leases
        poll(lambda: any(m.startswith(b"a|") for m in rds.zrange(leases, 0, -1)), timeout=30,
             what="the worker on replica A to claim the activity")
        a.kill()  # the replica dies: nobody hands the lease back, it must expire
        killed_at = time.monotonic()
        on_b = start_worker(b.address, "quick")
        state = c.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == client.OrchestrationStatus.COMPLETED
        assert state.serialized_output == "2"
        took = time.monotonic() - killed_at
        assert took < LEASE_SECONDS + 5, f"took {took:.1f}s"
    finally:
        for proc in (on_a, on_b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        c.close()
