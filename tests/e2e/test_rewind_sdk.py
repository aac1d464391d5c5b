"""Rewinding failed orchestrations with the official SDK: ``rewind_orchestration`` on the client, the
SDK worker's rewrite of the history, and what the service does with it.

Each scenario runs against this service and against the SDK's in-memory backend, except where
the backend deliberately differs (README, "Deliberate differences"). Activities count their
calls (they run in this process, on the SDK worker's threads), so a test sees what ran again.
"""
from __future__ import annotations

import collections
import threading
import uuid

import grpc
import pytest
from durabletask import client, task
from durabletask.internal import orchestrator_service_pb2 as pb

from e2e_helpers import get_instance, ours_only, poll, sdk_on, sdk_stub, serve

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus
TIMEOUT = 30

_lock = threading.Lock()
CALLS: collections.Counter[str] = collections.Counter()  # activity input -> calls started
FINISHED: collections.Counter[str] = collections.Counter()  # activity input -> calls returned
RELEASE: dict[str, threading.Event] = collections.defaultdict(threading.Event)


def _count(key: str) -> int:
    with _lock:
        CALLS[key] += 1
        return CALLS[key]


def steady(ctx: task.ActivityContext, key: str) -> str:
    _count(key)
    return f"{key}: ok"


def flaky(ctx: task.ActivityContext, key: str) -> str:
    """Fails its first call, succeeds after."""
    if _count(key) == 1:
        raise RuntimeError(f"{key}: first call fails")
    return f"{key}: ok"


def held(ctx: task.ActivityContext, key: str) -> str:
    """Returns once the test releases ``key``."""
    _count(key)
    RELEASE[key].wait(TIMEOUT)
    with _lock:
        FINISHED[key] += 1
    return f"{key}: ok"


def steps(ctx: task.OrchestrationContext, tag: str):
    first = yield ctx.call_activity(steady, input=f"{tag}/steady")
    second = yield ctx.call_activity(flaky, input=f"{tag}/flaky")
    return [first, second]


def flaky_child(ctx: task.OrchestrationContext, tag: str):
    result = yield ctx.call_activity(flaky, input=f"{tag}/child")
    return result


def with_flaky_child(ctx: task.OrchestrationContext, tag: str):
    first = yield ctx.call_activity(steady, input=f"{tag}/steady")
    second = yield ctx.call_sub_orchestrator(flaky_child, input=tag, instance_id=f"{tag}-child")
    return [first, second]


def waits_for_go(ctx: task.OrchestrationContext, _):
    answer = yield ctx.wait_for_external_event("go")
    return answer


def two_children(ctx: task.OrchestrationContext, tag: str):
    """The flaky child fails the parent while the other still waits; that one ends after the parent failed."""
    later = ctx.call_sub_orchestrator(waits_for_go, instance_id=f"{tag}-waits")
    first = yield ctx.call_sub_orchestrator(flaky_child, input=tag, instance_id=f"{tag}-child")
    second = yield later
    return [first, second]


def slow_and_flaky(ctx: task.OrchestrationContext, tag: str):
    """Fails while an activity it scheduled is still under way."""
    slow = ctx.call_activity(held, input=f"{tag}/held")
    first = yield ctx.call_activity(flaky, input=f"{tag}/flaky")
    second = yield slow
    return [first, second]


ORCHESTRATORS = (steps, flaky_child, with_flaky_child, waits_for_go, two_children, slow_and_flaky)
ACTIVITIES = (steady, flaky, held)


@pytest.fixture(params=["ours", "reference"])
def sdk(request, replicas):
    with sdk_on(serve(request.param, request, replicas), request.param, ORCHESTRATORS, ACTIVITIES) as c:
        yield c


def tag_of(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def failed(c: client.TaskHubGrpcClient, iid: str) -> client.OrchestrationState:
    state = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.runtime_status == Status.FAILED, state
    return state


def run_steps_and_rewind(c: client.TaskHubGrpcClient, tag: str) -> client.OrchestrationState:
    iid = c.schedule_new_orchestration(steps, input=tag, instance_id=tag)
    assert "first call fails" in failed(c, iid).failure_details.message
    c.rewind_orchestration(iid, reason="the flaky service is back")
    # Right after the call the instance is running again: waiting returns its new end, not the old failure.
    return c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


def test_a_failed_activity_runs_again_and_one_that_succeeded_does_not(sdk):
    tag = tag_of("steps")
    state = run_steps_and_rewind(sdk, tag)
    assert state.runtime_status == Status.COMPLETED, state
    assert state.get_output() == [f"{tag}/steady: ok", f"{tag}/flaky: ok"]
    assert state.failure_details is None
    assert (CALLS[f"{tag}/steady"], CALLS[f"{tag}/flaky"]) == (1, 2)


def history_kinds(address: str, iid: str) -> list[str]:
    with sdk_stub(address) as stub:
        return [e.WhichOneof("eventType") for chunk in
                stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId=iid)) for e in chunk.events]


def test_the_rewound_history_holds_the_rewind_under_a_new_execution_id(sdk):
    tag = tag_of("exec")
    iid = sdk.schedule_new_orchestration(steps, input=tag, instance_id=tag)
    failed(sdk, iid)
    first = get_instance(sdk.address, iid).orchestrationState.executionId.value
    sdk.rewind_orchestration(iid, reason="again")
    assert sdk.wait_for_orchestration_completion(iid, timeout=TIMEOUT).runtime_status == Status.COMPLETED
    second = get_instance(sdk.address, iid).orchestrationState.executionId.value
    if sdk.backend == "ours":  # the in-memory backend reports no execution id
        assert first and second and first != second
    kinds = history_kinds(sdk.address, iid)
    assert kinds.count("executionRewound") == 1 and kinds.count("taskFailed") == 0
    assert kinds.count("executionStarted") == 1 and kinds.count("executionCompleted") == 1
    assert kinds[-1] == "executionCompleted"


def test_rewinding_an_instance_that_did_not_fail_is_refused(sdk):
    tag = tag_of("ok")
    iid = sdk.schedule_new_orchestration(steps, input=tag, instance_id=tag)
    failed(sdk, iid)
    sdk.rewind_orchestration(iid)
    assert sdk.wait_for_orchestration_completion(iid, timeout=TIMEOUT).runtime_status == Status.COMPLETED
    with pytest.raises(grpc.RpcError) as info:
        sdk.rewind_orchestration(iid)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        sdk.rewind_orchestration(f"{tag}-nobody")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_failed_sub_orchestration_is_rewound_with_its_parent(sdk, rds, hub_keys):
    tag = tag_of("sub")
    iid = sdk.schedule_new_orchestration(with_flaky_child, input=tag, instance_id=tag)
    failed(sdk, iid)
    assert sdk.get_orchestration_state(f"{tag}-child").runtime_status == Status.FAILED
    sdk.rewind_orchestration(iid, reason="child fixed")
    state = sdk.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.runtime_status == Status.COMPLETED, state
    assert state.get_output() == [f"{tag}/steady: ok", f"{tag}/child: ok"]
    child = sdk.get_orchestration_state(f"{tag}-child")
    assert (child.runtime_status, child.get_output()) == (Status.COMPLETED, f"{tag}/child: ok")
    assert (CALLS[f"{tag}/steady"], CALLS[f"{tag}/child"]) == (1, 2)
    if sdk.backend == "ours":  # the child's parent link names the parent's new execution (the reference keeps none)
        parent_execution = get_instance(sdk.address, iid).orchestrationState.executionId.value
        link = rds.hget(hub_keys.for_instance(f"{tag}-child").instance(f"{tag}-child"), "parent_execution_id")
        assert link.decode() == parent_execution
        with sdk_stub(sdk.address) as stub:
            started = [e.executionStarted for chunk in stub.StreamInstanceHistory(
                pb.StreamInstanceHistoryRequest(instanceId=f"{tag}-child")) for e in chunk.events
                if e.HasField("executionStarted")]
        assert [s.parentInstance.orchestrationInstance.executionId.value for s in started] == [parent_execution]


def test_a_purged_failed_sub_orchestration_is_created_again(sdk):
    tag = tag_of("purged")
    iid = sdk.schedule_new_orchestration(with_flaky_child, input=tag, instance_id=tag)
    failed(sdk, iid)
    assert sdk.purge_orchestration(f"{tag}-child", recursive=False).deleted_instance_count == 1
    assert sdk.get_orchestration_state(f"{tag}-child") is None
    sdk.rewind_orchestration(iid)
    state = sdk.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.runtime_status == Status.COMPLETED, state
    assert state.get_output() == [f"{tag}/steady: ok", f"{tag}/child: ok"]
    child = poll(lambda: sdk.get_orchestration_state(f"{tag}-child"), timeout=TIMEOUT, what="the child again")
    assert child.runtime_status == Status.COMPLETED
    assert (CALLS[f"{tag}/steady"], CALLS[f"{tag}/child"]) == (1, 2)


def test_a_child_that_ended_after_its_parent_failed_reaches_the_rewound_parent(sdk):
    tag = tag_of("late")
    iid = sdk.schedule_new_orchestration(two_children, input=tag, instance_id=tag)
    failed(sdk, iid)
    sdk.raise_orchestration_event(f"{tag}-waits", "go", data="went")
    done = sdk.wait_for_orchestration_completion(f"{tag}-waits", timeout=TIMEOUT)
    assert done.runtime_status == Status.COMPLETED  # its end found the parent failed: dropped
    sdk.rewind_orchestration(iid)
    state = sdk.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.runtime_status == Status.COMPLETED, state
    assert state.get_output() == [f"{tag}/child: ok", "went"]


def test_an_activity_under_way_when_it_failed_runs_again(sdk):
    ours_only(sdk, "keeps a result that comes after the failure (it hands the failed instance to a worker again "
                   "and the result joins its history), so the activity does not run again")
    tag = tag_of("held")
    iid = sdk.schedule_new_orchestration(slow_and_flaky, input=tag, instance_id=tag)
    failed(sdk, iid)
    RELEASE[f"{tag}/held"].set()  # its result comes after the failure: dropped
    poll(lambda: FINISHED[f"{tag}/held"] == 1, timeout=TIMEOUT, what="the held activity to return")
    sdk.rewind_orchestration(iid)
    state = sdk.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.runtime_status == Status.COMPLETED, state
    assert state.get_output() == [f"{tag}/flaky: ok", f"{tag}/held: ok"]
    assert (CALLS[f"{tag}/flaky"], CALLS[f"{tag}/held"]) == (2, 2)


def test_rewind_with_the_client_on_one_replica_and_the_worker_on_another(replicas):
    a, b = replicas.start(), replicas.start()
    with sdk_on(b.address, "ours", ORCHESTRATORS, ACTIVITIES) as on_b:
        on_a = client.TaskHubGrpcClient(host_address=a.address)
        try:
            tag = tag_of("two")
            state = run_steps_and_rewind(on_a, tag)
            assert state.runtime_status == Status.COMPLETED, state
            assert (CALLS[f"{tag}/steady"], CALLS[f"{tag}/flaky"]) == (1, 2)
            sub = tag_of("two-sub")
            on_a.schedule_new_orchestration(with_flaky_child, input=sub, instance_id=sub)
            failed(on_a, sub)
            on_a.rewind_orchestration(sub)
            assert on_a.wait_for_orchestration_completion(sub, timeout=TIMEOUT).runtime_status == Status.COMPLETED
            assert on_b.get_orchestration_state(f"{sub}-child").runtime_status == Status.COMPLETED
        finally:
            on_a.close()
