"""The engine on a Redis Cluster: two replicas started with ``--redis-cluster`` on a three-node Cluster
that this module starts, an SDK worker on one and the SDK client on the other. Instances, their
children and the outbox between them spread over the nodes (16 partitions, 16 hash tags)."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from durabletask import client, task, worker

from scheduler.testing import ServerProcess, redis_cluster, start_server

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus


def double(ctx, n: int) -> int:
    return 2 * n


def waits(ctx: task.OrchestrationContext, _):
    return (yield ctx.wait_for_external_event("go"))


def child(ctx: task.OrchestrationContext, n: int):
    yield ctx.create_timer(timedelta(milliseconds=200))
    return (yield ctx.call_activity(double, input=n))


def parent(ctx: task.OrchestrationContext, count: int):
    results = yield task.when_all([ctx.call_sub_orchestrator(child, input=i) for i in range(count)])
    return sum(results)


def pinger(ctx: task.OrchestrationContext, target: str):
    ctx.send_event(target, "go", data="over the outbox")
    return "sent"


def holds_children(ctx: task.OrchestrationContext, ids: list[str]):
    yield task.when_all([ctx.call_sub_orchestrator(waits, instance_id=i) for i in ids])


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster() as url:
        yield url


@pytest.fixture
def two_replicas(cluster_url: str, key_prefix: str, hub_name: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    args = ("--redis-cluster", "--key-prefix", key_prefix, "--task-hub", hub_name, "--partitions", "16")
    servers = [start_server(cluster_url, *args) for _ in range(2)]
    yield servers[0], servers[1]
    codes = [s.stop(8.0) for s in servers]
    assert codes == [0, 0], f"replicas did not stop cleanly: {codes}"


@pytest.fixture
def sdk(two_replicas) -> Iterator[client.TaskHubGrpcClient]:
    runs_work, takes_calls = two_replicas
    w = worker.TaskHubGrpcWorker(host_address=runs_work.address)
    for fn in (waits, child, parent, pinger, holds_children):
        w.add_orchestrator(fn)
    w.add_activity(double)
    w.start()
    c = client.TaskHubGrpcClient(host_address=takes_calls.address)
    try:
        yield c
    finally:
        w.stop()
        c.close()


def test_sub_orchestrations_timers_and_activities_across_the_nodes(sdk):
    iid = sdk.schedule_new_orchestration(parent, input=12)
    state = sdk.wait_for_orchestration_completion(iid, timeout=60)
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    assert state.serialized_output == str(sum(2 * i for i in range(12)))


def test_events_and_recursive_termination_go_through_the_outbox(sdk):
    waiting = sdk.schedule_new_orchestration(waits)
    sdk.wait_for_orchestration_start(waiting, timeout=30)
    sdk.schedule_new_orchestration(pinger, input=waiting)
    assert sdk.wait_for_orchestration_completion(waiting, timeout=30).serialized_output == '"over the outbox"'

    kids = [f"kid-{i}" for i in range(6)]
    top = sdk.schedule_new_orchestration(holds_children, input=kids)
    for kid in kids:
        sdk.wait_for_orchestration_start(kid, timeout=30)
    sdk.terminate_orchestration(top, output="stop", recursive=True)
    for iid in (top, *kids):
        assert sdk.wait_for_orchestration_completion(iid, timeout=30).runtime_status == Status.TERMINATED, iid
