"""Redis under Sentinel: the primary is SIGKILLed under load while two replicas of the service
(``--redis-sentinels``, ``--redis-min-replica-acks 1``) serve SDK clients and workers. The service
follows the new primary without a restart, calls succeed again, and every start it acknowledged
completes exactly once: with acks 1, an acknowledged start is on the replica that takes over.

The killed server comes back as a replica of the new primary (as a StatefulSet pod restarted by
Kubernetes does), so that writes again have a replica to wait for."""
from __future__ import annotations

import pytest

from failover_run import kill_under_load
from scheduler.testing import redis_sentinels, start_server

pytestmark = pytest.mark.e2e


def test_a_killed_primary_loses_no_acknowledged_start(key_prefix, hub_name, capsys):
    with redis_sentinels(replicas=1) as topology:
        common = ["--redis-sentinels", topology.sentinel_addresses, "--redis-sentinel-master", topology.master,
                  "--redis-min-replica-acks", "1", "--key-prefix", key_prefix, "--task-hub", hub_name,
                  "--partitions", "4", "--lease-seconds", "3", "--health-ping-seconds", "0.5"]
        servers = [start_server(None, *common) for _ in range(2)]
        kill_under_load(servers, topology.kill_primary, topology.wait_for_new_primary, topology.restart_as_replica,
                        "sentinel", capsys)
