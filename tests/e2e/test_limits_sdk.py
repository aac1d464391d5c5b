"""The server's size and count limits, through the official SDK (client and worker) against a server subprocess.

- Thousands of timers firing at the same instant reach the orchestration in one work item.
- An event a client raises that would push an orchestration's next work item past its budget
  (max-message-bytes minus 64 KiB) is refused up front with RESOURCE_EXHAUSTED; nothing is written.
- An activity result with no room in its orchestration's next work item fails that orchestration
  (errorType "ActivityResultTooLarge"), not the worker's stream.
- Instance states and query pages with large payloads each fit one message: pages end early.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

import grpc
import pytest
from durabletask import client, history, task
from durabletask.internal import orchestrator_service_pb2 as pb

from e2e_helpers import sdk_on, sdk_stub

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus

MIB = 1024 * 1024
SMALL_MESSAGES = ("--max-message-bytes", str(MIB))  # work item budget: 1 MiB - 64 KiB = 983040 bytes
TIMERS = 10_000


# --- orchestrators and activities ---------------------------------------------------------------

def many_timers(ctx: task.OrchestrationContext, count: int):
    fire_at = ctx.current_utc_datetime + timedelta(seconds=3)
    timers = [ctx.create_timer(fire_at) for _ in range(count)]
    yield task.when_all(timers)
    return f"{count} timers fired"


def waits_for_a(ctx: task.OrchestrationContext, payload: str):
    a = yield ctx.wait_for_external_event("a")
    return {"input": len(payload), "a": len(a)}


def big_result(ctx: task.ActivityContext, size: int) -> str:
    return "r" * size


def calls_big_activity(ctx: task.OrchestrationContext, payload: str):
    result = yield ctx.call_activity(big_result, input=600_000)
    return len(payload) + len(result)


def small(ctx: task.OrchestrationContext, n: int):
    return n + 1


# --- helpers --------------------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def recording_logger(name: str) -> tuple[logging.Logger, _Records]:
    """A logger for an SDK worker that keeps what it logs (to count its stream connections)."""
    logger = logging.Logger(name)
    records = _Records()
    logger.addHandler(records)
    return logger, records


def connections(records: _Records) -> int:
    """How many times the SDK worker (re)connected: once per GetWorkItems stream it opened."""
    return sum(m.startswith("Created fresh connection") for m in records.messages)


def timed(what: str):
    """Prints how long a block took (pytest -s shows it); a test keeps its timeouts well above."""
    class _Timer:
        def __enter__(self):
            self.start = time.monotonic()
            return self

        def __exit__(self, *exc):
            self.elapsed = time.monotonic() - self.start
            print(f"{what}: {self.elapsed:.1f}s")
    return _Timer()


# --- tests ----------------------------------------------------------------------------------------

def test_ten_thousand_timers_firing_together_complete(replicas):
    server = replicas.start("--max-history-events", "50000")
    with sdk_on(server.address, "ours", (many_timers,), ()) as c:
        with timed("10,000 timers"):
            iid = c.schedule_new_orchestration(many_timers, input=TIMERS)
            state = c.wait_for_orchestration_completion(iid, timeout=180)
    assert state is not None
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    assert state.get_output() == f"{TIMERS} timers fired"
    with client.TaskHubGrpcClient(host_address=server.address) as c:
        kinds = [type(e).__name__ for e in c.get_orchestration_history(iid)]
    assert kinds.count("TimerCreatedEvent") == TIMERS
    assert kinds.count("TimerFiredEvent") == TIMERS
    # one episode scheduled the timers, one more received all 10,000 of them in a single work item
    assert kinds.count("OrchestratorStartedEvent") == 2, kinds.count("OrchestratorStartedEvent")


def test_events_past_the_work_item_budget_are_refused_up_front(replicas):
    server = replicas.start(*SMALL_MESSAGES)
    c = client.TaskHubGrpcClient(host_address=server.address)
    try:
        iid = c.schedule_new_orchestration(waits_for_a, input="i" * 300_000)
        c.raise_orchestration_event(iid, "a", data="a" * 300_000)  # 600 KB pending: fits
        with pytest.raises(grpc.RpcError) as refused:
            c.raise_orchestration_event(iid, "b", data="b" * 600_000)  # 1.2 MB: no room
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        state = c.get_orchestration_state(iid, fetch_payloads=False)
        assert state.runtime_status == Status.PENDING  # the refusal changed nothing
    finally:
        c.close()

    # Only now a worker: the first work item carries the input and event "a", never "b".
    with sdk_on(server.address, "ours", (waits_for_a,), ()) as c:
        state = c.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == Status.COMPLETED, state.failure_details
        assert state.get_output() == {"input": 300_000, "a": 300_000}
        raised = [e.name for e in c.get_orchestration_history(iid) if isinstance(e, history.EventRaisedEvent)]
        assert raised == ["a"], "the refused event was written after all"


def test_an_activity_result_too_large_fails_only_its_orchestration(replicas):
    server = replicas.start(*SMALL_MESSAGES)
    logger, records = recording_logger("limits-worker")
    with sdk_on(server.address, "ours", (calls_big_activity, small), (big_result,), logger=logger) as c:
        a = c.schedule_new_orchestration(calls_big_activity, input="p" * 600_000)
        state = c.wait_for_orchestration_completion(a, timeout=30)
        assert state.runtime_status == Status.FAILED
        assert state.failure_details is not None
        assert state.failure_details.error_type == "ActivityResultTooLarge", state.failure_details
        assert "result of activity" in state.failure_details.message, state.failure_details.message
        assert "no room" in state.failure_details.message, state.failure_details.message

        b = c.schedule_new_orchestration(small, input=41)  # the same worker, the same stream
        state = c.wait_for_orchestration_completion(b, timeout=30)
        assert state.runtime_status == Status.COMPLETED, state.failure_details
        assert state.get_output() == 42
        assert connections(records) == 1, f"the worker's stream was restarted: {records.messages}"


def test_get_and_query_with_payloads_fit_one_message(server_with_small_messages):
    server = server_with_small_messages
    c = client.TaskHubGrpcClient(host_address=server.address)
    try:
        inputs = {f"big-{i}": chr(ord("a") + i) * 300_000 for i in range(6)}  # 1.8 MB in all
        inputs["huge"] = "h" * 900_000  # just under the payload limit (983040 bytes)
        for iid, payload in inputs.items():
            c.schedule_new_orchestration("Orch", input=payload, instance_id=iid, tags={"size": str(len(payload))})

        state = c.get_orchestration_state("huge", fetch_payloads=True)
        assert state is not None and state.get_input() == inputs["huge"]

        # The pages themselves, as the SDK's stub gets them: each fits one message, so they end early.
        pages, token = [], None
        with sdk_stub(server.address) as stub:
            while True:
                query = pb.InstanceQuery(maxInstanceCount=100, fetchInputsAndOutputs=True, continuationToken=token)
                page = stub.QueryInstances(pb.QueryInstancesRequest(query=query))
                assert page.ByteSize() <= MIB
                pages.append([s.instanceId for s in page.orchestrationState])
                if not page.HasField("continuationToken") or page.continuationToken.value in ("", "0"):
                    break
                token = page.continuationToken
                assert len(pages) <= len(inputs), f"pages do not end: {pages}"
        assert len(pages) > 1 and all(len(p) < len(inputs) for p in pages), pages
        assert sorted(iid for p in pages for iid in p) == sorted(inputs), pages

        for count in (None, 2, 100):  # unbounded, small and large pages: the server ends a page early
            query = (client.OrchestrationQuery(fetch_inputs_and_outputs=True) if count is None else
                     client.OrchestrationQuery(fetch_inputs_and_outputs=True, max_instance_count=count))
            states = c.get_all_orchestration_states(query)
            got = {s.instance_id: s.get_input() for s in states}
            assert sorted(got) == sorted(inputs), f"max_instance_count={count}"
            assert got == inputs, f"max_instance_count={count}: an input came back altered"
            assert len(states) == len(inputs), f"max_instance_count={count}: an instance came back twice"
    finally:
        c.close()


@pytest.fixture
def server_with_small_messages(replicas):
    return replicas.start(*SMALL_MESSAGES)
