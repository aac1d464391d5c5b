"""The official SDK worker (TaskHubGrpcWorker) runs orchestrations served by a server subprocess.

Orchestrations with activities, durable timers and external events are supported so
far; sub-orchestrations, events to other instances and continue-as-new fail the
instance with a failure that says so.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task, worker
from durabletask.entities import EntityInstanceId

from e2e_helpers import ours_only, poll, sdk_on, serve

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus


def hello(ctx: task.OrchestrationContext, name: str) -> str:
    ctx.set_custom_status({"step": "greeting"})
    return f"Hello {name}"


def when_started(ctx: task.OrchestrationContext, _) -> str:
    return ctx.current_utc_datetime.isoformat()


def boom(ctx: task.OrchestrationContext, _):
    raise ValueError("kaput")


def with_timer(ctx: task.OrchestrationContext, _):
    start = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(seconds=1))
    return (ctx.current_utc_datetime - start).total_seconds()


def child(ctx: task.OrchestrationContext, n: int):
    if n < 0:
        raise ValueError("negative")
    return n * 10


def with_child(ctx: task.OrchestrationContext, n: int):
    result = yield ctx.call_sub_orchestrator(child, input=n)
    return result


def fan_out_children(ctx: task.OrchestrationContext, count: int):
    results = yield task.when_all([ctx.call_sub_orchestrator(child, input=i) for i in range(count)])
    return sum(results)


def child_fails(ctx: task.OrchestrationContext, _):
    try:
        yield ctx.call_sub_orchestrator(child, input=-1)
    except task.TaskFailedError as e:
        return "child failed: " + e.details.message


def pinger(ctx: task.OrchestrationContext, target: str):
    ctx.send_event(target, "answer", data="from pinger")
    return "sent"


def signals_entity(ctx: task.OrchestrationContext, _):
    ctx.signal_entity(EntityInstanceId("counter", "c1"), "add", input=1)
    return "signalled"


def counter(ctx: task.OrchestrationContext, n: int):
    if n < 3:
        ctx.continue_as_new(n + 1)
        return None
    return n


ATTEMPTS: dict[str, int] = {}


def flaky(ctx, key: str) -> str:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] < 3:
        raise RuntimeError(f"attempt {ATTEMPTS[key]} failed")
    return f"ok after {ATTEMPTS[key]}"


def retries(ctx: task.OrchestrationContext, key: str):
    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=200), max_number_of_attempts=3)
    result = yield ctx.call_activity(flaky, input=key, retry_policy=policy)
    return result


def approval(ctx: task.OrchestrationContext, _):
    answer = yield ctx.wait_for_external_event("answer")
    return f"answered {answer}"


def event_or_timeout(ctx: task.OrchestrationContext, seconds: float):
    event = ctx.wait_for_external_event("go")
    timeout = ctx.create_timer(timedelta(seconds=seconds))
    winner = yield task.when_any([event, timeout])
    return "event: " + str(event.get_result()) if winner == event else "timed out"


@pytest.fixture(params=["ours", "reference"])
def running(request, replicas):
    """An SDK client whose orchestrations an SDK worker runs, against this service ("ours") or the SDK's
    in-memory backend ("reference"): the same scenarios on both is the differential test."""
    with sdk_on(serve(request.param, request, replicas), request.param,
                (hello, when_started, boom, with_timer, with_child, child, event_or_timeout, approval, counter,
                 fan_out_children, child_fails, pinger, signals_entity, retries), (flaky,)) as c:
        yield c


def test_an_orchestration_runs_to_completion(running):
    iid = running.schedule_new_orchestration(hello, input="world")
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == '"Hello world"'
    assert state.serialized_custom_status == '{"step": "greeting"}'
    kinds = [type(e).__name__ for e in running.get_orchestration_history(iid)]
    assert kinds[:2] == ["OrchestratorStartedEvent", "ExecutionStartedEvent"]
    assert kinds[-1] == "ExecutionCompletedEvent"


def test_a_delayed_start_runs_at_its_time_not_before(running):
    ours_only(running, "ignores scheduledStartTimestamp")
    start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
    iid = running.schedule_new_orchestration(when_started, start_at=start_at)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    ran_at = datetime.fromisoformat(state.serialized_output.strip('"'))
    if ran_at.tzinfo is None:
        ran_at = ran_at.replace(tzinfo=timezone.utc)
    assert ran_at >= start_at, "dispatched before its scheduled start"
    assert ran_at - start_at < timedelta(seconds=5)


def test_an_orchestrator_failure_is_recorded_with_its_details(running):
    iid = running.schedule_new_orchestration(boom)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.FAILED
    assert state.failure_details.error_type.endswith("ValueError")  # the SDK reports "builtins.ValueError"
    assert "kaput" in state.failure_details.message


def test_an_orchestration_that_signals_an_entity_completes_and_the_signal_arrives(running):
    iid = running.schedule_new_orchestration(signals_entity)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED and state.serialized_output == '"signalled"'
    # the worker runs no "counter" entity: the operation fails there, but the entity got the signal
    poll(lambda: running.get_entity(EntityInstanceId("counter", "c1")), 10, what="the entity to exist")


def test_a_durable_timer_fires_at_its_time(running):
    iid = running.schedule_new_orchestration(with_timer)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert 1.0 <= float(state.serialized_output) < 5.0  # orchestration time: never before the timer


def test_when_any_of_an_event_and_a_timer(running):
    waits = running.schedule_new_orchestration(event_or_timeout, input=30)
    running.wait_for_orchestration_start(waits, timeout=30)
    running.raise_orchestration_event(waits, "go", data="now")
    assert running.wait_for_orchestration_completion(waits, timeout=30).serialized_output == '"event: now"'
    gives_up = running.schedule_new_orchestration(event_or_timeout, input=1)
    assert running.wait_for_orchestration_completion(gives_up, timeout=30).serialized_output == '"timed out"'


def double(ctx, n: int) -> int:
    return n * 2


def fail_activity(ctx, _):
    raise RuntimeError("activity broke")


def sequence(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_activity(double, input=n)
    b = yield ctx.call_activity(double, input=a)
    return [a, b]


def fan_out(ctx: task.OrchestrationContext, count: int):
    results = yield task.when_all([ctx.call_activity(double, input=i) for i in range(count)])
    return sum(results)


def catches(ctx: task.OrchestrationContext, _):
    try:
        yield ctx.call_activity(fail_activity)
    except task.TaskFailedError as e:
        return f"caught: {e.details.message}"


@pytest.fixture(params=["ours", "reference"])
def with_activities(request, replicas):
    with sdk_on(serve(request.param, request, replicas), request.param,
                (sequence, fan_out, catches), (double, fail_activity)) as c:
        yield c


def test_an_activity_sequence(with_activities):
    iid = with_activities.schedule_new_orchestration(sequence, input=5)
    state = with_activities.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == "[10, 20]"


def test_fan_out_fan_in_of_100_activities(with_activities):
    iid = with_activities.schedule_new_orchestration(fan_out, input=100)
    state = with_activities.wait_for_orchestration_completion(iid, timeout=60)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == str(sum(2 * i for i in range(100)))


def test_an_activity_failure_reaches_the_orchestrator(with_activities):
    iid = with_activities.schedule_new_orchestration(catches)
    state = with_activities.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert "activity broke" in state.serialized_output


def test_terminating_a_running_orchestration(running):
    iid = running.schedule_new_orchestration(approval)
    running.wait_for_orchestration_start(iid, timeout=30)
    running.terminate_orchestration(iid, output="no longer needed")
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.TERMINATED
    assert state.serialized_output == '"no longer needed"'


def test_suspend_and_resume_a_running_orchestration(running):
    iid = running.schedule_new_orchestration(approval)
    running.wait_for_orchestration_start(iid, timeout=30)
    running.suspend_orchestration(iid)
    # Ours reports SUSPENDED at once; the reference once its worker has processed the suspension.
    poll(lambda: running.get_orchestration_state(iid).runtime_status == Status.SUSPENDED, timeout=10,
         what="the instance to be suspended")
    running.raise_orchestration_event(iid, "answer", data="yes")  # kept while suspended
    with pytest.raises(TimeoutError):
        running.wait_for_orchestration_completion(iid, timeout=1)
    running.resume_orchestration(iid)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == '"answered yes"'


def test_continue_as_new_starts_fresh_executions(running):
    iid = running.schedule_new_orchestration(counter, input=0)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == "3"
    assert state.serialized_input == "3"  # the last execution's input
    history = running.get_orchestration_history(iid)
    started = [e for e in history if type(e).__name__ == "ExecutionStartedEvent"]
    assert len(started) == 1, "the history holds the last execution only"


def test_a_sub_orchestration_returns_its_result_to_the_parent(running):
    iid = running.schedule_new_orchestration(with_child, input=4)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED and state.serialized_output == "40"


def test_fan_out_of_sub_orchestrations(running):
    iid = running.schedule_new_orchestration(fan_out_children, input=10)
    state = running.wait_for_orchestration_completion(iid, timeout=60)
    assert state.runtime_status == Status.COMPLETED and state.serialized_output == str(sum(i * 10 for i in range(10)))


def test_a_failing_sub_orchestration_fails_the_parent_task(running):
    iid = running.schedule_new_orchestration(child_fails)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert "negative" in state.serialized_output


def test_an_event_sent_by_one_orchestration_reaches_another(running):
    waiting = running.schedule_new_orchestration(approval)
    running.wait_for_orchestration_start(waiting, timeout=30)
    sender = running.schedule_new_orchestration(pinger, input=waiting)
    assert running.wait_for_orchestration_completion(sender, timeout=30).serialized_output == '"sent"'
    state = running.wait_for_orchestration_completion(waiting, timeout=30)
    assert state.serialized_output == '"answered from pinger"'


def test_a_retry_policy_retries_a_failing_activity(running):
    key = f"{running.backend}-{datetime.now().timestamp()}"
    iid = running.schedule_new_orchestration(retries, input=key)
    state = running.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == Status.COMPLETED
    assert state.serialized_output == '"ok after 3"'


def act_a(ctx, x: int) -> str:
    return f"a{x}"


def act_b(ctx, x: int) -> str:
    return f"b{x}"


def orch_a(ctx: task.OrchestrationContext, x: int):
    return (yield ctx.call_activity(act_a, input=x))


def orch_b(ctx: task.OrchestrationContext, x: int):
    return (yield ctx.call_activity(act_b, input=x))


@pytest.mark.parametrize("backend", ["ours", "reference"])
def test_work_item_filters_route_work_to_the_worker_that_has_it(request, replicas, backend):
    address = serve(backend, request, replicas)
    workers = []
    for orch, act in ((orch_a, act_a), (orch_b, act_b)):
        w = worker.TaskHubGrpcWorker(host_address=address)
        w.add_orchestrator(orch)
        w.add_activity(act)
        w.use_work_item_filters()  # generated from what it registered
        w.start()
        workers.append(w)
    c = client.TaskHubGrpcClient(host_address=address)
    try:
        ids = [(c.schedule_new_orchestration(orch, input=i), f'"{tag}{i}"')
               for i in range(8) for orch, tag in ((orch_a, "a"), (orch_b, "b"))]
        for iid, expected in ids:
            state = c.wait_for_orchestration_completion(iid, timeout=30)
            # A worker without the orchestrator or activity would fail it ("not registered").
            assert state.runtime_status == Status.COMPLETED, state.failure_details
            assert state.serialized_output == expected
    finally:
        for w in workers:
            w.stop()
        c.close()
