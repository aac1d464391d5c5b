"""Recursive terminate and purge of sub-orchestrations, driven by the official SDK.

The SDK's in-memory backend does not follow sub-orchestrations (it logs "Recursive
termination is not supported" and purges the named instance only), so these run
against this service only; the non-recursive cases run against both.
"""
from __future__ import annotations

import pytest
from durabletask import client, task

from e2e_helpers import ours_only, poll, sdk_on, serve

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus


def waits(ctx: task.OrchestrationContext, _):
    answer = yield ctx.wait_for_external_event("go")
    return answer


def middle(ctx: task.OrchestrationContext, child_id: str):
    result = yield ctx.call_sub_orchestrator(waits, instance_id=child_id)
    return result


def top(ctx: task.OrchestrationContext, ids: list[str]):
    result = yield ctx.call_sub_orchestrator(middle, input=ids[1], instance_id=ids[0])
    return result


def leaf(ctx: task.OrchestrationContext, n: int) -> int:
    return n


def parent_of_leaves(ctx: task.OrchestrationContext, ids: list[str]):
    results = yield task.when_all([ctx.call_sub_orchestrator(leaf, input=i, instance_id=iid)
                                   for i, iid in enumerate(ids)])
    return sum(results)


@pytest.fixture(params=["ours", "reference"])
def sdk(request, replicas):
    with sdk_on(serve(request.param, request, replicas), request.param,
                (waits, middle, top, leaf, parent_of_leaves), ()) as c:
        yield c


def start_three_generations(sdk, tag: str) -> tuple[str, str, str]:
    ids = (f"{tag}-top", f"{tag}-middle", f"{tag}-bottom")
    sdk.schedule_new_orchestration(top, input=list(ids[1:]), instance_id=ids[0])
    for iid in ids:
        poll(lambda iid=iid: (s := sdk.get_orchestration_state(iid)) is not None
             and s.runtime_status == Status.RUNNING, timeout=30, what=f"{iid} to run")
    return ids


def test_a_recursive_terminate_ends_every_running_descendant(sdk):
    ours_only(sdk, "does not support recursive termination")
    ids = start_three_generations(sdk, "rec")
    sdk.terminate_orchestration(ids[0], output="enough", recursive=True)
    for iid in ids:
        state = sdk.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == Status.TERMINATED, iid
        assert state.serialized_output == '"enough"'


def test_a_terminate_that_is_not_recursive_leaves_the_children_running(sdk):
    ids = start_three_generations(sdk, "flat")
    sdk.terminate_orchestration(ids[0], output="enough", recursive=False)
    assert sdk.wait_for_orchestration_completion(ids[0], timeout=30).runtime_status == Status.TERMINATED
    # The children still run: an event finishes the bottom one, whose result reaches the middle one.
    sdk.raise_orchestration_event(ids[2], "go", data="still here")
    assert sdk.wait_for_orchestration_completion(ids[2], timeout=30).serialized_output == '"still here"'
    state = sdk.wait_for_orchestration_completion(ids[1], timeout=30)
    assert (state.runtime_status, state.serialized_output) == (Status.COMPLETED, '"still here"')


@pytest.mark.parametrize("recursive", [True, False])
def test_purging_a_parent_with_and_without_its_children(sdk, recursive):
    if recursive:
        ours_only(sdk, "purges the named instance only")
    tag = "rp" if recursive else "p"
    leaves = [f"{tag}-leaf-{i}" for i in range(3)]
    parent = sdk.schedule_new_orchestration(parent_of_leaves, input=leaves, instance_id=f"{tag}-parent")
    assert sdk.wait_for_orchestration_completion(parent, timeout=30).serialized_output == "3"
    result = sdk.purge_orchestration(parent, recursive=recursive)
    assert result.deleted_instance_count == (4 if recursive else 1)
    assert sdk.get_orchestration_state(parent) is None
    left = [iid for iid in leaves if sdk.get_orchestration_state(iid) is not None]
    assert left == ([] if recursive else leaves)
