"""Two promoters race over the same hub: 1,000 delayed starts, each promoted exactly once, none early."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client

from e2e_helpers import due_ms, poll, scrape_counter

pytestmark = pytest.mark.e2e

COUNT = 1000
LEAD = timedelta(seconds=3)     # first due time, from the start of the burst
SPREAD_MS = 1000                # due times spread over this window
PROMOTED = "dt_promoted_total"
LAG_COUNT = "dt_promotion_lag_seconds_count"


def test_two_promoters_promote_each_due_start_once(replicas, probe, hub_name):
    servers = [replicas.start(metrics=True), replicas.start(metrics=True)]
    ports = [replicas.metrics_port(s) for s in servers]
    for port in ports:
        assert scrape_counter(port, PROMOTED, hub_name) == 0

    clients = [client.TaskHubGrpcClient(host_address=s.address) for s in servers]
    base = datetime.now(timezone.utc) + LEAD
    start_at = {f"race-{i:04d}": base + timedelta(milliseconds=i % SPREAD_MS, microseconds=(i * 7919) % 1000)
                for i in range(COUNT)}

    def schedule(item):
        n, (iid, at) = item
        return clients[n % 2].schedule_new_orchestration("Race", input=n, instance_id=iid, start_at=at)

    try:
        with ThreadPoolExecutor(16) as pool:
            assert sorted(pool.map(schedule, enumerate(start_at.items()))) == sorted(start_at)
    finally:
        for c in clients:
            c.close()

    # Precondition: everything was accepted before the first due time, so every start goes through a promoter.
    first = probe.queues()
    assert first.now_ms < due_ms(base), "scheduling took too long for this test; raise LEAD"
    assert (first.due, first.ready) == (COUNT, 0)
    due_scores = probe.zset("due")
    assert due_scores == {iid: due_ms(at) for iid, at in start_at.items()}

    snapshots = 0
    deadline = time.monotonic() + LEAD.total_seconds() + SPREAD_MS / 1000 + 10
    while True:
        q = probe.queues()
        snapshots += 1
        assert q.ready_in_future == 0, f"{q.ready_in_future} entries were promoted before their due time"
        assert q.due + q.ready == COUNT, f"entries lost or duplicated in flight: {q}"
        if q.due == 0:
            break
        assert time.monotonic() < deadline, f"promotion did not finish: {q}"
        time.sleep(0.002)
    assert snapshots > 50, "the test did not watch the promotion happen"

    assert probe.zset("ready") == due_scores, "every ready score must equal its due score"
    assert probe.status_counts() == {"PENDING": COUNT}

    def promoted() -> list[float]:
        return [scrape_counter(port, PROMOTED, hub_name) for port in ports]

    poll(lambda: sum(promoted()) >= COUNT, timeout=5, what="both replicas' promotion counters")
    per_replica = promoted()
    assert sum(per_replica) == COUNT, f"promotions counted per replica: {per_replica}"
    lags = [scrape_counter(port, LAG_COUNT, hub_name) for port in ports]
    assert sum(lags) == COUNT, f"promotion lag observations per replica: {lags}"
