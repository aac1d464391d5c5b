"""Two replicas on one Redis, a worker on each: 500 orchestrations complete, each exactly once."""
from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from durabletask import client, task, worker

pytestmark = pytest.mark.e2e

RUNS: collections.Counter[int] = collections.Counter()
LOCK = threading.Lock()


def square(ctx, n: int) -> int:
    with LOCK:
        RUNS[n] += 1
    return n * n


def one_step(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_activity(square, input=n))


def test_500_orchestrations_over_two_replicas_and_two_workers(replicas):
    a, b = replicas.start("--lease-seconds", "10"), replicas.start("--lease-seconds", "10")
    workers = []
    for server in (a, b):
        w = worker.TaskHubGrpcWorker(host_address=server.address)
        w.add_orchestrator(one_step)
        w.add_activity(square)
        w.start()
        workers.append(w)
    clients = [client.TaskHubGrpcClient(host_address=s.address) for s in (a, b)]
    RUNS.clear()
    try:
        ids = {clients[n % 2].schedule_new_orchestration(one_step, input=n, instance_id=f"n-{n}"): n
               for n in range(500)}

        def finish(iid: str) -> client.OrchestrationState:
            return clients[ids[iid] % 2 ^ 1].wait_for_orchestration_completion(iid, timeout=120)

        with ThreadPoolExecutor(16) as pool:
            states = dict(zip(ids, pool.map(finish, ids)))
        for iid, n in ids.items():
            assert states[iid].runtime_status == client.OrchestrationStatus.COMPLETED, iid
            assert states[iid].serialized_output == str(n * n)
        assert sorted(RUNS) == list(range(500)) and set(RUNS.values()) == {1}, "each activity ran exactly once"
        for iid in list(ids)[:50]:  # the outputs are not duplicated in the histories either
            kinds = [type(e).__name__ for e in clients[0].get_orchestration_history(iid)]
            assert kinds.count("ExecutionCompletedEvent") == 1 and kinds.count("TaskScheduledEvent") == 1
    finally:
        for w in workers:
            w.stop()
        for c in clients:
            c.close()
