"""Redis Cluster failover: a master of a Cluster with one replica per master is SIGKILLed under load while
two replicas of the service (``--redis-cluster --redis-min-replica-acks 1``) serve SDK clients and workers.
Its replica takes over; calls succeed again and every start the service acknowledged completes exactly
once (a write's WAIT goes to the master of the written key's slot). The killed node is started again and
rejoins as a replica (as a restarted pod does), so the new master's writes have a replica to wait for."""
from __future__ import annotations

import pytest

from failover_run import kill_under_load
from scheduler.testing import redis_cluster_nodes, start_server

pytestmark = pytest.mark.e2e


def test_a_killed_cluster_master_loses_no_acknowledged_start(key_prefix, hub_name, capsys):
    with redis_cluster_nodes(masters=3, replicas=1, node_timeout_ms=2000) as cluster:
        common = ["--redis-cluster", "--redis-min-replica-acks", "1", "--key-prefix", key_prefix,
                  "--task-hub", hub_name, "--partitions", "8", "--lease-seconds", "3", "--health-ping-seconds", "0.5"]
        servers = [start_server(cluster.url, *common) for _ in range(2)]
        kill_under_load(servers, cluster.kill_master, lambda old: cluster.wait_for_failover(old, 3),
                        lambda old: cluster.nodes[old].start(), "cluster", capsys)
