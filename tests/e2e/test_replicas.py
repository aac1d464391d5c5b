"""Two replicas on one Redis: whatever one accepts, the other serves."""
from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from durabletask import client
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs

from e2e_helpers import Probe, due_ms, get_instance, poll
from scheduler.store.keys import HubKeys

pytestmark = pytest.mark.e2e

SIGTERM_ATTEMPTS = 6


@pytest.fixture
def pair(replicas):
    a, b = replicas.start(), replicas.start()
    ca = client.TaskHubGrpcClient(host_address=a.address)
    cb = client.TaskHubGrpcClient(host_address=b.address)
    yield a, b, ca, cb
    ca.close()
    cb.close()


def test_start_on_one_replica_read_on_the_other(pair):
    a, b, ca, cb = pair
    start_at = datetime.now(timezone.utc) + timedelta(minutes=3)
    ca.schedule_new_orchestration("Now", input={"n": 1}, instance_id="x-now", tags={"k": "v"}, version="2")
    ca.schedule_new_orchestration("Later", input=[True, None], instance_id="x-later", start_at=start_at)
    cb.schedule_new_orchestration("FromB", input="b", instance_id="x-from-b")

    for iid in ("x-now", "x-later", "x-from-b"):
        on_a, on_b = get_instance(a.address, iid), get_instance(b.address, iid)
        assert on_a.exists and on_b.exists
        assert on_a == on_b, f"{iid} differs between replicas"
        assert ca.get_orchestration_state(iid) == cb.get_orchestration_state(iid)

    now = get_instance(b.address, "x-now").orchestrationState
    assert (now.name, now.input.value, dict(now.tags), now.version.value) == ("Now", '{"n": 1}', {"k": "v"}, "2")
    later = get_instance(b.address, "x-later").orchestrationState
    assert later.scheduledStartTimestamp.ToDatetime(tzinfo=timezone.utc) == start_at
    assert later.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
    assert get_instance(a.address, "x-from-b").orchestrationState.input.value == '"b"'


def test_id_conflicts_and_reuse_span_replicas(pair):
    a, b, ca, cb = pair
    ca.schedule_new_orchestration("Orig", input=1, instance_id="shared-id")
    with pytest.raises(grpc.RpcError) as info:
        cb.schedule_new_orchestration("Other", input=2, instance_id="shared-id")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS

    policy = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_PENDING])
    cb.schedule_new_orchestration("Other", input=2, instance_id="shared-id", reuse_id_policy=policy)
    state = ca.get_orchestration_state("shared-id")
    assert (state.name, state.get_input()) == ("Other", 2)


def test_a_hub_named_by_metadata_is_shared_and_promoted(pair, key_prefix, probe, rds):
    a, b, _, default_b = pair
    other = "other-" + uuid.uuid4().hex[:6]
    on_a = client.TaskHubGrpcClient(host_address=a.address, metadata=[("taskhub", other)])
    on_b = client.TaskHubGrpcClient(host_address=b.address, metadata=[("taskhub", other)])
    try:
        start_at = datetime.now(timezone.utc) + timedelta(seconds=1)
        iid = on_a.schedule_new_orchestration("Elsewhere", input="o", instance_id="hub-x", start_at=start_at)
        assert on_b.get_orchestration_state(iid).get_input() == "o"
        assert default_b.get_orchestration_state(iid) is None, "the default hub must not see it"
        assert rds.hget(HubKeys(key_prefix, other, 4).meta, "partitions") == b"4"
        other_probe = Probe(rds, HubKeys(key_prefix, other, 4))
        assert other_probe.where_is(iid).due_score == due_ms(start_at)
        poll(lambda: other_probe.where_is(iid).ready_score is not None, timeout=10, what="promotion in the other hub")
        assert other_probe.where_is(iid).ready_score == due_ms(start_at)
        assert probe.queues().due == probe.queues().ready == 0
    finally:
        on_a.close()
        on_b.close()


async def test_concurrent_reads_get_their_own_instance_even_when_callers_give_up(pair):
    """Many GetInstance calls in flight on both replicas, a third of them with deadlines short
    enough to be cancelled mid-way: every answer that arrives belongs to the instance asked for."""
    a, b, ca, _ = pair
    for n in range(200):
        ca.schedule_new_orchestration(f"Name{n}", input={"n": n}, instance_id=f"pair-{n}")
    channels = [grpc.aio.insecure_channel(s.address) for s in (a, b)]
    stubs_ = [stubs.TaskHubSidecarServiceStub(ch) for ch in channels]
    rng = random.Random(7)

    async def read(k: int):
        n = rng.randrange(200)
        timeout = rng.choice([0.0005, 0.002, 0.01]) if k % 3 == 0 else 10
        request = pb.GetInstanceRequest(instanceId=f"pair-{n}", getInputsAndOutputs=True)
        try:
            response = await stubs_[k % 2].GetInstance(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and k % 3 == 0, exc
            return None
        state = response.orchestrationState
        assert (state.name, state.input.value) == (f"Name{n}", json.dumps({"n": n})), (n, state)
        return n

    try:
        gave_up = 0
        for _ in range(3):
            answers = await asyncio.gather(*(read(k) for k in range(600)))
            assert sum(1 for x in answers if x is not None) >= 400
            gave_up += answers.count(None)
        assert gave_up > 0, "no caller gave up mid-way: the deadlines did not exercise cancellation"
    finally:
        for ch in channels:
            await ch.close()


def test_sigterm_right_after_start_exits_promptly(replicas):
    """Graceful shutdown must finish whenever SIGTERM arrives, even just after READY.

    The window (the replica's pub/sub subscription still being set up) is short, so
    several replicas are started and signalled in turn; each must exit 0 within 6 s.
    """
    for n in range(SIGTERM_ATTEMPTS):
        server = replicas.start()
        server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = server.proc.wait(6)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail(f"replica {n} still running {time.monotonic() - t0:.1f}s after SIGTERM")
        assert code == 0, f"replica {n} exited with code {code} after SIGTERM"
