"""Interleavings a user writes every day, driven by the official SDK on two replicas (the client on one,
the worker on the other) and side by side on the SDK's in-memory backend.

A durable timer that comes due while a later episode of its orchestration runs (a slow replay) once
stranded the orchestration: the promoter took the timer's due entry, a stream's claim found the
instance leased and took it off the ready set, and the episode's completion made it ready again only
for events in its inbox."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from durabletask import client, task

from e2e_helpers import poll, ref_backend, sdk_on

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus
SLOW_EPISODE_SECONDS = 2.5  # longer than the timer: it comes due while the episode runs


def quick(ctx: task.ActivityContext, _) -> str:
    return "ok"


def timer_then_slow_episode(ctx: task.OrchestrationContext, _):
    timer = ctx.create_timer(timedelta(seconds=1))
    yield ctx.call_activity(quick)
    if not ctx.is_replaying:
        time.sleep(SLOW_EPISODE_SECONDS)
    yield timer
    return "done"


def approval_with_timeout(ctx: task.OrchestrationContext, _):
    timeout = ctx.create_timer(timedelta(seconds=1))
    approval = ctx.wait_for_external_event("approve")
    ping = ctx.wait_for_external_event("ping")
    winner = yield task.when_any([approval, timeout, ping])
    if winner is ping:  # another event's episode, slow: the timeout fires meanwhile
        if not ctx.is_replaying:
            time.sleep(SLOW_EPISODE_SECONDS)
        winner = yield task.when_any([approval, timeout])
    return "approved" if winner is approval else "timed out"


@pytest.fixture(params=["ours", "reference"])
def sdk(request, replicas):
    functions = ((timer_then_slow_episode, approval_with_timeout), (quick,))
    if request.param == "ours":
        args = ("--lease-seconds", "30", "--health-ping-seconds", "0.5")
        client_side, worker_side = replicas.start(*args), replicas.start(*args)
        with sdk_on(worker_side.address, "ours", *functions):
            c = client.TaskHubGrpcClient(host_address=client_side.address)
            c.backend = "ours"
            yield c
            c.close()
        return
    reference, address = ref_backend.start()
    request.addfinalizer(lambda: ref_backend.stop(reference))
    with sdk_on(address, "reference", *functions) as c:
        yield c


def ended(sdk, instance_id: str, timeout: float) -> client.OrchestrationState:
    return poll(lambda: (s := sdk.get_orchestration_state(instance_id)) is not None
                and s.runtime_status != Status.RUNNING and s.runtime_status != Status.PENDING and s,
                timeout=timeout, what=f"{instance_id} to end")


def test_a_timer_due_during_a_slow_episode_still_fires(sdk):
    iid = sdk.schedule_new_orchestration(timer_then_slow_episode)
    state = ended(sdk, iid, timeout=20)
    assert state.runtime_status == Status.COMPLETED and state.serialized_output == '"done"'


def test_a_timeout_that_fires_during_another_events_episode_wins(sdk):
    iid = sdk.schedule_new_orchestration(approval_with_timeout)
    sdk.wait_for_orchestration_start(iid, timeout=10)
    sdk.raise_orchestration_event(iid, "ping")
    state = ended(sdk, iid, timeout=20)
    assert state.runtime_status == Status.COMPLETED and state.serialized_output == '"timed out"'
