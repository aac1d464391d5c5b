"""The official SDK client (sync and async) against one server subprocess."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from durabletask import client
from durabletask.internal import orchestrator_service_pb2 as pb

from e2e_helpers import due_ms, get_instance

pytestmark = pytest.mark.e2e

PENDING = client.OrchestrationStatus.PENDING


@pytest.fixture
def sdk(server):
    c = client.TaskHubGrpcClient(host_address=server.address)
    yield c
    c.close()


def test_schedule_now_round_trips_name_and_input(sdk, probe):
    payload = {"order": 42, "items": ["a", "b"], "note": "ünïcode"}
    before = datetime.now(timezone.utc)
    iid = sdk.schedule_new_orchestration("ProcessOrder", input=payload, instance_id="order-42")
    assert iid == "order-42"

    state = sdk.get_orchestration_state(iid)
    assert state is not None
    assert (state.instance_id, state.name, state.runtime_status) == ("order-42", "ProcessOrder", PENDING)
    assert state.get_input() == payload
    assert state.serialized_output is None and state.failure_details is None
    created = state.created_at.replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=1) <= created <= datetime.now(timezone.utc) + timedelta(seconds=1)

    without_payloads = sdk.get_orchestration_state(iid, fetch_payloads=False)
    assert without_payloads.serialized_input is None and without_payloads.name == "ProcessOrder"

    where = probe.where_is(iid)
    assert where.due_score is None and where.ready_score is not None, "a start without a time is ready at once"
    assert probe.status_counts() == {"PENDING": 1}


def test_schedule_without_an_id_gets_a_fresh_one(sdk):
    first = sdk.schedule_new_orchestration("NoId")
    second = sdk.schedule_new_orchestration("NoId")
    assert first and second and first != second
    assert sdk.get_orchestration_state(first).name == "NoId"
    assert sdk.get_orchestration_state(second).runtime_status == PENDING


def test_unknown_instance_is_none(sdk):
    assert sdk.get_orchestration_state("no-such-" + uuid.uuid4().hex) is None


def test_delayed_start_is_promoted_at_not_before_its_time(sdk, server, probe):
    start_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    due = due_ms(start_at)
    iid = sdk.schedule_new_orchestration("Later", input=[1, 2], instance_id="later-1", start_at=start_at)

    assert sdk.get_orchestration_state(iid).runtime_status == PENDING
    raw = get_instance(server.address, iid).orchestrationState
    assert raw.scheduledStartTimestamp.ToDatetime(tzinfo=timezone.utc) == start_at

    first = probe.where_is(iid)
    assert first.now_ms < due, "the test must look before the due time"
    assert (first.due_score, first.ready_score) == (due, None)

    seen_waiting = 0
    deadline = time.monotonic() + 10
    while True:
        at = probe.where_is(iid)
        if at.now_ms < due:
            assert (at.due_score, at.ready_score) == (due, None), f"moved {due - at.now_ms} ms early"
            seen_waiting += 1
        if at.ready_score is not None:
            break
        assert time.monotonic() < deadline, "never promoted"
        time.sleep(0.005)
    assert at.due_score is None, "an entry is either due or ready, never both"
    assert at.ready_score == due, "the ready score is the due time"
    assert at.now_ms >= due
    assert at.now_ms - due < 500, f"promoted {at.now_ms - due} ms late"
    assert seen_waiting > 10
    assert sdk.get_orchestration_state(iid).runtime_status == PENDING, "no workers yet: still pending"


def test_start_time_in_the_past_is_ready_at_once(sdk, server, probe):
    start_at = datetime.now(timezone.utc) - timedelta(hours=1)
    iid = sdk.schedule_new_orchestration("Past", instance_id="past-1", start_at=start_at)
    where = probe.where_is(iid)
    assert where.due_score is None and where.ready_score is not None
    assert where.ready_score > due_ms(start_at), "ready since its creation, not since the past start time"
    raw = get_instance(server.address, iid).orchestrationState
    assert raw.scheduledStartTimestamp.ToDatetime(tzinfo=timezone.utc) == start_at
    assert raw.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING


def test_an_accepted_input_can_be_read_back(sdk):
    """Whatever input StartInstance accepts, GetInstance must be able to return to the same SDK.

    The SDK and the server both use gRPC's default 4 MiB message limit; the response carries
    more fields than the request (timestamps, execution id, status), so an input just under
    the request limit must be refused at start rather than accepted and never readable again.
    """
    for short_of_4mib in (160, 120, 100, 80, 70, 60, 50, 40, 30, 20, 10):
        big = "x" * (4 * 1024 * 1024 - short_of_4mib)
        iid = f"big-{short_of_4mib}"
        try:
            sdk.schedule_new_orchestration("Big", input=big, instance_id=iid)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
            break
        try:
            state = sdk.get_orchestration_state(iid)
        except grpc.RpcError as exc:
            pytest.fail(f"an input 4 MiB - {short_of_4mib} bytes long was accepted but cannot be read back: "
                        f"{exc.code()} {exc.details()}")
        assert state.get_input() == big
    else:
        pytest.fail("an input just under 4 MiB was accepted; the server's limit is not where expected")


def test_duplicate_id_needs_a_reuse_policy(sdk, server, probe):
    sdk.schedule_new_orchestration("Dup", input="first", instance_id="dup-1")
    with pytest.raises(grpc.RpcError) as info:
        sdk.schedule_new_orchestration("Dup", input="second", instance_id="dup-1")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert sdk.get_orchestration_state("dup-1").get_input() == "first"

    only_completed = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_COMPLETED])
    with pytest.raises(grpc.RpcError) as info:
        sdk.schedule_new_orchestration("Dup", input="third", instance_id="dup-1", reuse_id_policy=only_completed)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS

    before = get_instance(server.address, "dup-1").orchestrationState.executionId.value
    pending = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_PENDING])
    assert sdk.schedule_new_orchestration("Dup2", input="fourth", instance_id="dup-1",
                                          reuse_id_policy=pending) == "dup-1"
    state = sdk.get_orchestration_state("dup-1")
    assert (state.name, state.get_input(), state.runtime_status) == ("Dup2", "fourth", PENDING)
    after = get_instance(server.address, "dup-1").orchestrationState.executionId.value
    assert after and after != before, "a replaced instance starts a new execution"
    assert probe.status_counts() == {"PENDING": 1}, "replacing must not count the instance twice"


def test_tags_and_version_round_trip(sdk, server):
    tags = {"team": "payments", "env": "prod", "empty": ""}
    iid = sdk.schedule_new_orchestration("Tagged", instance_id="tagged-1", tags=tags, version="1.2.3")
    state = sdk.get_orchestration_state(iid)
    # The SDK's OrchestrationState has no tags or version fields: read the raw response.
    assert not hasattr(state, "tags") and not hasattr(state, "version")
    raw = get_instance(server.address, iid)
    assert raw.exists
    assert dict(raw.orchestrationState.tags) == tags
    assert raw.orchestrationState.version.value == "1.2.3"
    assert raw.orchestrationState.name == "Tagged"


def test_wait_for_start_of_a_scheduled_instance_times_out(sdk):
    start_at = datetime.now(timezone.utc) + timedelta(minutes=10)
    iid = sdk.schedule_new_orchestration("Far", start_at=start_at)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        sdk.wait_for_orchestration_start(iid, timeout=1)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 3.0, f"waited {elapsed:.2f}s for a 1s timeout"


def test_wait_for_start_of_an_unknown_instance_answers_none(sdk):
    t0 = time.monotonic()
    assert sdk.wait_for_orchestration_start("nobody-" + uuid.uuid4().hex, timeout=1) is None
    assert time.monotonic() - t0 < 1.5


async def test_async_client(server, probe):
    c = client.AsyncTaskHubGrpcClient(host_address=server.address)
    try:
        start_at = datetime.now(timezone.utc) + timedelta(minutes=5)
        iid = await c.schedule_new_orchestration("AsyncOne", input={"x": 1}, instance_id="async-1",
                                                 start_at=start_at)
        state = await c.get_orchestration_state(iid)
        assert (state.name, state.runtime_status, state.get_input()) == ("AsyncOne", PENDING, {"x": 1})
        assert probe.where_is(iid).due_score == due_ms(start_at)
        assert await c.get_orchestration_state("missing-" + uuid.uuid4().hex) is None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.schedule_new_orchestration("AsyncOne", instance_id="async-1")
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await c.wait_for_orchestration_start(iid, timeout=1)
        assert 0.9 <= time.monotonic() - t0 < 3.0
    finally:
        await c.close()
