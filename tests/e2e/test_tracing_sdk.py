"""OpenTelemetry traces (README "Tracing"): a server subprocess with the standard OTEL_* variables
pointing at an OTLP receiver the test runs, the official SDK client and worker in this process."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from durabletask.entities import EntityContext, EntityInstanceId

from e2e_helpers import entity_worker, sdk_on
from otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

WAIT = 30  # seconds: an SDK round trip and a span export, on a loaded machine
TRACED_WORKER = os.path.join(os.path.dirname(__file__), "traced_worker_proc.py")


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}"


def one_activity(ctx: task.OrchestrationContext, name: str):
    return (yield ctx.call_activity(greet, input=name))


def tally(ctx: EntityContext, value):
    ctx.set_state(ctx.get_state(int, 0) + value)
    return ctx.get_state()


def calls_tally(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_entity(EntityInstanceId("tally", "one"), "add", n))


def twice_then_fail(ctx: task.OrchestrationContext, n: int):
    yield ctx.call_activity(greet, input=str(n))
    if n == 0:
        ctx.continue_as_new(1)
        return None
    raise ValueError("the second execution fails")


def child(ctx: task.OrchestrationContext, n: int):
    return n * 10


def timer_then_child(ctx: task.OrchestrationContext, _):
    yield ctx.create_timer(timedelta(milliseconds=200))
    return (yield ctx.call_sub_orchestrator(child, input=4))


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def otel_env(receiver: OtlpReceiver, service: str, protocol: str = "grpc") -> dict[str, str]:
    endpoint = receiver.http_endpoint if protocol == "http/protobuf" else receiver.endpoint
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "50"}


def named(spans, name):
    return [s for s in spans if s.name == name]


def test_an_orchestration_and_its_activity_are_spans_of_one_trace(replicas, receiver, rds, hub_keys):
    service = "dt-" + uuid.uuid4().hex[:8]
    address = replicas.start(env=otel_env(receiver, service)).address
    with sdk_on(address, "ours", [one_activity], [greet]) as c:
        iid = c.schedule_new_orchestration(one_activity, input="world")
        state = c.wait_for_orchestration_completion(iid, timeout=WAIT)
    assert state.runtime_status == client.OrchestrationStatus.COMPLETED

    spans = receiver.wait_for(lambda s: named(s, "orchestration:one_activity") and named(s, "activity:greet"),
                              WAIT, "the orchestration and activity spans")
    orch, = named(spans, "orchestration:one_activity")
    act, = named(spans, "activity:greet")
    assert orch.trace_id == act.trace_id
    assert act.parent_id == orch.span_id
    assert orch.parent_id == ""  # the client sent no trace context: a new trace
    assert orch.service == act.service == service
    assert orch.attributes["durabletask.task.instance_id"] == iid
    assert orch.attributes["durabletask.task.status"] == "COMPLETED"
    assert orch.attributes["durabletask.task.execution_id"]
    assert orch.start_ns <= act.start_ns <= act.end_ns <= orch.end_ns
    kept = rds.hget(hub_keys.for_instance(iid).instance(iid), "trace").decode()  # chosen at creation
    assert kept == orch.trace_id + orch.span_id


def test_the_clients_trace_is_the_parent_and_the_worker_gets_it(replicas, receiver):
    address = replicas.start(env=otel_env(receiver, "dt-client-trace", protocol="http/protobuf")).address
    trace_id, span_id = uuid.uuid4().int >> 1, (uuid.uuid4().int >> 65) or 1
    seen: dict[str, str] = {}

    def greet_traced(ctx: task.ActivityContext, name: str) -> str:  # the SDK makes the handed context current
        current = trace.get_current_span().get_span_context()
        seen["trace"] = f"{current.trace_id:032x}"
        return name

    def orchestrate(ctx: task.OrchestrationContext, _):
        return (yield ctx.call_activity(greet_traced, input="x"))

    caller = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with sdk_on(address, "ours", [orchestrate], [greet_traced]) as c:
        with trace.use_span(NonRecordingSpan(caller)):  # the SDK client sends the current span as parentTraceContext
            iid = c.schedule_new_orchestration(orchestrate)
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).runtime_status == \
            client.OrchestrationStatus.COMPLETED

    spans = receiver.wait_for(lambda s: named(s, "orchestration:orchestrate") and named(s, "activity:greet_traced"),
                              WAIT, "the spans of the client's orchestration (OTLP over HTTP)")
    orch, = named(spans, "orchestration:orchestrate")
    assert orch.trace_id == f"{trace_id:032x}"
    assert orch.parent_id == f"{span_id:016x}"
    assert named(spans, "activity:greet_traced")[0].trace_id == orch.trace_id
    assert seen["trace"] == orch.trace_id  # the activity ran in the same trace


def test_a_timer_and_a_sub_orchestration_are_child_spans(replicas, receiver):
    address = replicas.start(env=otel_env(receiver, "dt-children")).address
    with sdk_on(address, "ours", [timer_then_child, child], []) as c:
        iid = c.schedule_new_orchestration(timer_then_child)
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).serialized_output == "40"

    def complete(spans):
        return named(spans, "orchestration:timer_then_child") and named(spans, "orchestration:child") \
            and named(spans, "timer:timer_then_child")
    spans = receiver.wait_for(complete, WAIT, "the parent, child and timer spans")
    parent, = named(spans, "orchestration:timer_then_child")
    sub, = named(spans, "orchestration:child")
    timer, = named(spans, "timer:timer_then_child")
    assert sub.trace_id == timer.trace_id == parent.trace_id
    assert sub.parent_id == timer.parent_id == parent.span_id
    assert timer.end_ns - timer.start_ns >= 150_000_000
    assert sub.attributes["durabletask.task.instance_id"] != iid


def test_a_delayed_start_has_a_promotion_span_with_its_lag(replicas, receiver):
    address = replicas.start(env=otel_env(receiver, "dt-delayed")).address
    with sdk_on(address, "ours", [one_activity], [greet]) as c:
        due = datetime.now(timezone.utc) + timedelta(milliseconds=500)
        iid = c.schedule_new_orchestration(one_activity, input="later", start_at=due)
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).runtime_status == \
            client.OrchestrationStatus.COMPLETED

    spans = receiver.wait_for(lambda s: named(s, "promotion:one_activity") and named(s, "orchestration:one_activity"),
                              WAIT, "the promotion span")
    promotion, = named(spans, "promotion:one_activity")
    orch, = named(spans, "orchestration:one_activity")
    assert promotion.trace_id == orch.trace_id and promotion.parent_id == orch.span_id
    assert promotion.attributes["dt.promotion.lag_ms"] >= 0
    due_ns = int(due.timestamp() * 1000) * 1_000_000
    assert abs(promotion.start_ns - due_ns) <= 1_000_000  # it starts at the due time (ms)


def test_without_otel_traces_exporter_nothing_is_sent_and_the_service_works(replicas, receiver, rds, hub_keys):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "dt-off",
           "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_TRACES_EXPORTER": ""}
    server = replicas.start(env=env)
    with sdk_on(server.address, "ours", [one_activity], [greet]) as c:
        iid = c.schedule_new_orchestration(one_activity, input="off")
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).serialized_output == '"Hello off"'
    assert server.stop() == 0  # a replica flushes its spans when it stops: none may come
    assert receiver.spans() == []
    assert rds.hget(hub_keys.for_instance(iid).instance(iid), "trace") is None  # nothing more is stored


def test_the_spans_of_a_worker_that_traces_join_the_services(replicas, receiver):
    """The SDK worker's own spans: its orchestration span under the service's, its activity span under the
    service's activity span, all in one trace."""
    address = replicas.start(env=otel_env(receiver, "dt-service")).address
    proc = subprocess.Popen([sys.executable, TRACED_WORKER, address], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **otel_env(receiver, "sdk-worker")})
    try:
        assert proc.stdout.readline().strip() == "WORKER READY"
        c = client.TaskHubGrpcClient(host_address=address)
        iid = c.schedule_new_orchestration("traced_one", input="sdk")
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).serialized_output == '"Hello sdk"'
        c.close()
        proc.stdin.close()  # the worker flushes its spans and exits
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def by(spans, service, name):
        return [s for s in spans if s.service == service and s.name == name]

    def complete(spans):
        return all(by(spans, service, name) for service in ("dt-service", "sdk-worker")
                   for name in ("orchestration:traced_one", "activity:traced_greet"))
    spans = receiver.wait_for(complete, WAIT, "the service's and the worker's spans")
    orch, = by(spans, "dt-service", "orchestration:traced_one")
    act, = by(spans, "dt-service", "activity:traced_greet")
    sdk_orch, = by(spans, "sdk-worker", "orchestration:traced_one")
    sdk_act, = [s for s in by(spans, "sdk-worker", "activity:traced_greet") if s.kind == "SERVER"]
    sdk_call, = [s for s in by(spans, "sdk-worker", "activity:traced_greet") if s.kind == "CLIENT"]
    assert {s.trace_id for s in spans} == {orch.trace_id}
    assert sdk_orch.parent_id == orch.span_id  # the worker's orchestration span under the service's
    assert sdk_act.parent_id == act.span_id  # the worker's activity span under the service's activity span
    assert sdk_call.parent_id == sdk_orch.span_id  # the orchestrator's call, as the SDK nests it
    assert len({orch.span_id, act.span_id, sdk_orch.span_id, sdk_act.span_id, sdk_call.span_id}) == 5


def test_a_call_to_an_entity_is_a_child_span_of_the_calling_orchestration(replicas, receiver):
    address = replicas.start(env=otel_env(receiver, "dt-entities")).address
    with entity_worker(address, orchestrators=[calls_tally], entities=[tally]):
        c = client.TaskHubGrpcClient(host_address=address)
        iid = c.schedule_new_orchestration(calls_tally, input=3)
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).serialized_output == "3"
        c.close()
    spans = receiver.wait_for(lambda s: named(s, "orchestration:calls_tally") and named(s, "entity:tally:add"),
                              WAIT, "the orchestration and entity operation spans")
    orch, = named(spans, "orchestration:calls_tally")
    call, = named(spans, "entity:tally:add")
    assert call.trace_id == orch.trace_id and call.parent_id == orch.span_id
    assert call.attributes["durabletask.task.instance_id"] == "@tally@one"
    assert orch.start_ns <= call.start_ns <= call.end_ns <= orch.end_ns


def test_a_continue_as_new_keeps_one_orchestration_span_and_a_failure_marks_it(replicas, receiver):
    address = replicas.start(env=otel_env(receiver, "dt-continued")).address
    with sdk_on(address, "ours", [twice_then_fail], [greet]) as c:
        iid = c.schedule_new_orchestration(twice_then_fail, input=0)
        assert c.wait_for_orchestration_completion(iid, timeout=WAIT).runtime_status == \
            client.OrchestrationStatus.FAILED
    spans = receiver.wait_for(
        lambda s: named(s, "orchestration:twice_then_fail") and len(named(s, "activity:greet")) == 2,
        WAIT, "the orchestration span and one activity span per execution")
    orch, = named(spans, "orchestration:twice_then_fail")
    first, second = named(spans, "activity:greet")
    assert first.span_id != second.span_id  # the same task id in two executions, two spans
    assert first.parent_id == second.parent_id == orch.span_id
    assert orch.error and orch.attributes["durabletask.task.status"] == "FAILED"
