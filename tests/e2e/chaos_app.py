"""The application of the chaos soak: what its SDK workers run, and what each instance must end with.

A ``chaos_parent`` instance runs ``ROUNDS`` executions (continue-as-new carries the rounds done so far,
and the unconsumed external events with ``save_events``). Each round:

1. three ``chaos_square`` activities and a short timer, together (``when_all``);
2. a ``when_any`` of the external event ``go-<round>`` (raised by the soak's driver, with the round's
   marker as payload) and a long timer (the timeout: taken only if the event is lost);
3. a ``chaos_child`` sub-orchestration (an activity and a short timer) with a fixed instance id;
4. three operations on one of ``COUNTERS`` shared ``chaos_counter`` entities: a signal, a delayed signal
   and a call, each with an operation id. The entity counts every id it applies, so an operation applied
   twice (or lost) shows by its id; the call returns the count of its own id, which must be 1.

Every value is a function of the instance's seed and the round (:func:`expected_round`), so the
driver knows the result each instance must end with. Activities may run more than once (a killed
worker's activity runs again); their results are deterministic, so only the results are checked.

Run as a script (``python chaos_app.py ADDRESS``) this module is an SDK worker process.
"""
from __future__ import annotations

import sys
import threading
from datetime import timedelta

from durabletask import task, worker
from durabletask.entities import EntityContext, EntityInstanceId

ROUNDS = 3
COUNTERS = 4
SHORT_TIMER = 0.3  # seconds
DELAYED_SIGNAL = 0.5  # seconds
EVENT_TIMEOUT = 40.0  # seconds: the driver raises every event well before this


def chaos_square(ctx: task.ActivityContext, x: int) -> int:
    return x * x


def chaos_counter(ctx: EntityContext, op: dict):
    state = ctx.get_state(dict, {"total": 0, "ops": {}})
    if ctx.operation == "add":
        state["total"] += op["v"]
        state["ops"][op["id"]] = state["ops"].get(op["id"], 0) + 1
        ctx.set_state(state)
        return state["ops"][op["id"]]
    return state


def chaos_child(ctx: task.OrchestrationContext, x: int):
    y = yield ctx.call_activity(chaos_square, input=x)
    yield ctx.create_timer(timedelta(seconds=SHORT_TIMER))
    return y + 1


def counter_of(seed: int) -> EntityInstanceId:
    return EntityInstanceId("chaos_counter", f"c{seed % COUNTERS}")


def op_ids(iid: str, r: int) -> list[tuple[str, int]]:
    """The (operation id, amount) of the three entity operations of round ``r`` of instance ``iid``."""
    seed = int(iid.rsplit("-", 1)[1])
    return [(f"{iid}:r{r}:{kind}", (seed + r) % 5 + 1 + k) for k, kind in enumerate(("sig", "late", "call"))]


def expected_round(seed: int, r: int) -> dict:
    xs = [seed * 10 + r * 3 + i for i in range(3)]
    return {"r": r, "acts": sum(x * x for x in xs), "event": f"ev-{seed}-{r}", "child": (seed + r) ** 2 + 1,
            "call": 1}


def chaos_parent(ctx: task.OrchestrationContext, inp: dict):
    seed, r, done = inp["seed"], inp["round"], inp["done"]
    ctx.set_custom_status(f"r{r}:activities")
    xs = [seed * 10 + r * 3 + i for i in range(3)]
    results = yield task.when_all([*(ctx.call_activity(chaos_square, input=x) for x in xs),
                                   ctx.create_timer(timedelta(seconds=SHORT_TIMER))])
    acts = sum(results[:3])

    ctx.set_custom_status(f"r{r}:event")
    event = ctx.wait_for_external_event(f"go-{r}")
    timeout = ctx.create_timer(timedelta(seconds=EVENT_TIMEOUT))
    winner = yield task.when_any([event, timeout])
    got = event.get_result() if winner is event else "timeout"

    ctx.set_custom_status(f"r{r}:child")
    child = yield ctx.call_sub_orchestrator(chaos_child, input=seed + r, instance_id=f"{ctx.instance_id}-child{r}")

    ctx.set_custom_status(f"r{r}:entity")
    (sig, v_sig), (late, v_late), (call, v_call) = op_ids(ctx.instance_id, r)
    counter = counter_of(seed)
    ctx.signal_entity(counter, "add", {"id": sig, "v": v_sig})
    ctx.signal_entity(counter, "add", {"id": late, "v": v_late},
                      signal_time=ctx.current_utc_datetime + timedelta(seconds=DELAYED_SIGNAL))
    applied = yield ctx.call_entity(counter, "add", {"id": call, "v": v_call})

    done = [*done, {"r": r, "acts": acts, "event": got, "child": child, "call": applied}]
    if r + 1 < ROUNDS:
        ctx.continue_as_new({"seed": seed, "round": r + 1, "done": done}, save_events=True)
        return None
    return done


def parent_input(seed: int) -> dict:
    return {"seed": seed, "round": 0, "done": []}


def expected_output(seed: int) -> list[dict]:
    return [expected_round(seed, r) for r in range(ROUNDS)]


if __name__ == "__main__":
    from durabletask.grpc_options import GrpcWorkerResiliencyOptions

    w = worker.TaskHubGrpcWorker(host_address=sys.argv[1], resiliency_options=GrpcWorkerResiliencyOptions(
        reconnect_backoff_base_seconds=0.2, reconnect_backoff_cap_seconds=1.0))
    w.add_orchestrator(chaos_parent)
    w.add_orchestrator(chaos_child)
    w.add_activity(chaos_square)
    w.add_entity(chaos_counter)
    w.start()
    print("WORKER READY", flush=True)
    threading.Event().wait()
