"""The SDK worker under a small --max-streams-per-connection: its work stream and many completions at once
share one channel; the completions past the bound wait in the client, none fails, every instance ends."""
from __future__ import annotations

import threading

import pytest
from durabletask import client, task, worker

from e2e_helpers import sdk_on

pytestmark = pytest.mark.e2e

BOUND = 4  # calls one connection may have open: the work stream and 3 more
WAVE = 16  # activities that wait for each other, then all complete at once
barrier = threading.Barrier(WAVE)


def together(ctx: task.ActivityContext, i: int) -> int:
    barrier.wait(timeout=30)  # WAVE activities run at once, so WAVE completions are sent at once
    return i


def fan_out(ctx: task.OrchestrationContext, count: int):
    results = yield task.when_all([ctx.call_activity(together, input=i) for i in range(count)])
    return sum(results)


def test_completions_past_the_bound_queue_and_all_succeed(replicas):
    barrier.reset()
    server = replicas.start("--max-streams-per-connection", str(BOUND), "--lease-seconds", "30")
    options = worker.ConcurrencyOptions(maximum_concurrent_activity_work_items=2 * WAVE,
                                        maximum_thread_pool_workers=2 * WAVE)
    with sdk_on(server.address, "ours", [fan_out], [together], concurrency_options=options) as c:
        iid = c.schedule_new_orchestration(fan_out, input=2 * WAVE)
        state = c.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == client.OrchestrationStatus.COMPLETED, state
    assert state.serialized_output == str(sum(range(2 * WAVE)))
    assert not barrier.broken
