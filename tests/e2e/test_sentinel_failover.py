"""Redis under Sentinel: the primary is SIGKILLed under load while two replicas of the service
(``--redis-sentinels``, ``--redis-min-replica-acks 1``) serve SDK clients and workers. The service
follows the new primary without a restart, calls succeed again, and every start it acknowledged
completes exactly once: with acks 1, an acknowledged start is on the replica that takes over.

The killed server comes back as a replica of the new primary (as a StatefulSet pod restarted by
Kubernetes does), so that writes again have a replica to wait for."""
from __future__ import annotations

import threading
import time

import pytest

from failover_run import run
from scheduler.testing import redis_sentinels, start_server

pytestmark = pytest.mark.e2e

TOTAL, KILL_AFTER = 300, 60


def test_a_killed_primary_loses_no_acknowledged_start(key_prefix, hub_name, capsys):
    with redis_sentinels(replicas=1) as topology:
        common = ["--redis-sentinels", topology.sentinel_addresses, "--redis-sentinel-master", topology.master,
                  "--redis-min-replica-acks", "1", "--key-prefix", key_prefix, "--task-hub", hub_name,
                  "--partitions", "4", "--lease-seconds", "3", "--health-ping-seconds", "0.5"]
        servers = [start_server(None, *common) for _ in range(2)]
        restarted = threading.Event()

        marks: dict[str, float] = {}

        def kill() -> None:
            killed = time.monotonic()
            old = topology.kill_primary()

            def bring_back() -> None:
                topology.wait_for_new_primary(old)
                marks["promoted"] = time.monotonic() - killed
                topology.restart_as_replica(old)
                restarted.set()
            threading.Thread(target=bring_back, daemon=True).start()

        try:
            out = run([s.address for s in servers], TOTAL, KILL_AFTER, kill, prefix="sentinel")
            assert restarted.is_set()
            assert all(s.proc.poll() is None for s in servers), "a replica of the service died"
        finally:
            for s in servers:
                s.stop()
    with capsys.disabled():
        print(f"\nsentinel failover: a replica took over {marks['promoted']:.1f} s after the kill; {len(out.acked)} acknowledged ({out.acked_at_kill} before the kill), "
              f"{len(out.unacked)} never acknowledged, first ack after the kill {out.back_after:.1f} s, last failed "
              f"attempt {out.last_failure_after:.1f} s after it, failed attempts "
              f"{dict(out.first_failures)}, lost {len(out.lost)}")
    assert not out.lost, f"acknowledged starts lost: {out.lost[:5]}"
    assert not out.wrong, out.wrong[:5]
    assert not out.twice, out.twice[:5]
    assert not out.unacked, f"starts never acknowledged: {out.unacked[:5]}"
    assert out.back_after is not None and len(out.acked) - out.acked_at_kill > 100
