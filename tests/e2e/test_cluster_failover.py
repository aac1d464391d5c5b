"""Redis Cluster failover: a master of a Cluster with one replica per master is SIGKILLed under load while
two replicas of the service (``--redis-cluster --redis-min-replica-acks 1``) serve SDK clients and workers.
Its replica takes over; calls succeed again and every start the service acknowledged completes exactly
once (a write's WAIT goes to the master of the written key's slot). The killed node is started again and
rejoins as a replica (as a restarted pod does), so the new master's writes have a replica to wait for."""
from __future__ import annotations

import threading
import time

import pytest

from failover_run import run
from scheduler.testing import redis_cluster_nodes, start_server

pytestmark = pytest.mark.e2e

TOTAL, KILL_AFTER = 300, 60


def test_a_killed_cluster_master_loses_no_acknowledged_start(key_prefix, hub_name, capsys):
    with redis_cluster_nodes(masters=3, replicas=1, node_timeout_ms=2000) as cluster:
        common = ["--redis-cluster", "--redis-min-replica-acks", "1", "--key-prefix", key_prefix,
                  "--task-hub", hub_name, "--partitions", "8", "--lease-seconds", "3", "--health-ping-seconds", "0.5"]
        servers = [start_server(cluster.url, *common) for _ in range(2)]
        rejoined = threading.Event()

        marks: dict[str, float] = {}

        def kill() -> None:
            killed = time.monotonic()
            old = cluster.kill_master()

            def bring_back() -> None:
                cluster.wait_for_failover(old, 3)
                marks["promoted"] = time.monotonic() - killed
                cluster.nodes[old].start()
                rejoined.set()
            threading.Thread(target=bring_back, daemon=True).start()

        try:
            out = run([s.address for s in servers], TOTAL, KILL_AFTER, kill, prefix="cluster")
            assert rejoined.is_set()
            assert all(s.proc.poll() is None for s in servers), "a replica of the service died"
        finally:
            for s in servers:
                s.stop()
    with capsys.disabled():
        print(f"\ncluster failover: a replica took over {marks['promoted']:.1f} s after the kill; {len(out.acked)} acknowledged ({out.acked_at_kill} before the kill), "
              f"{len(out.unacked)} never acknowledged, first ack after the kill {out.back_after:.1f} s, last failed "
              f"attempt {out.last_failure_after:.1f} s after it, failed attempts "
              f"{dict(out.first_failures)}, lost {len(out.lost)}")
    assert not out.lost, f"acknowledged starts lost: {out.lost[:5]}"
    assert not out.wrong, out.wrong[:5]
    assert not out.twice, out.twice[:5]
    assert not out.unacked, f"starts never acknowledged: {out.unacked[:5]}"
    assert out.back_after is not None and len(out.acked) - out.acked_at_kill > 100
