"""Scenarios run with Dapr Workflow's SDK (durabletask-dapr) in its own venv (see conftest.py), against
the Dapr port of a ``scheduler serve`` subprocess: ``python dapr_scenarios.py NAME HOST:PORT 'JSON ARGS'``.
A scenario prints its result as JSON on its last line (a worker scenario prints READY, then serves until
its stdin closes). It must not import anything of the repository."""
from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import timedelta

import grpc
from google.protobuf import wrappers_pb2
from durabletask import client, task, worker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs

WAIT = 60


def whoami(ctx: task.ActivityContext, _):
    return ctx.task_execution_id


def two_activities(ctx: task.OrchestrationContext, _):
    first = yield ctx.call_activity(whoami)
    second = yield ctx.call_activity(whoami)
    return [first, second]


def add_one(ctx: task.ActivityContext, n):
    return n + 1


def two_steps(ctx: task.OrchestrationContext, n):
    first = yield ctx.call_activity(add_one, input=n)
    second = yield ctx.call_activity(add_one, input=first)
    return [first, second]


def double(ctx: task.OrchestrationContext, n):
    return n * 2


def flow(ctx: task.OrchestrationContext, n):
    yield ctx.create_timer(timedelta(seconds=0.3))
    child = yield ctx.call_sub_orchestrator(double, input=n)
    event = yield ctx.wait_for_external_event("go")
    return [child, event]


def waiter(ctx: task.OrchestrationContext, _):
    value = yield ctx.wait_for_external_event("go")
    return value


def same(ctx: task.OrchestrationContext, _):
    return "dapr"


def patched_v2(ctx: task.OrchestrationContext, _):
    patched = ctx.is_patched("p1")
    yield ctx.wait_for_external_event("go")
    return {"patched": patched, "version": "v2"}


def plain_v1(ctx: task.OrchestrationContext, _):
    yield ctx.wait_for_external_event("go")
    return {"version": "v1"}


def _worker(address: str, *orchestrators, activities=(), versions=(), metadata=None) -> worker.TaskHubGrpcWorker:
    w = worker.TaskHubGrpcWorker(host_address=address, metadata=metadata)
    for fn in orchestrators:
        w.add_orchestrator(fn)
    for fn, name, version, latest in versions:  # (function, name, version, is latest)
        w._registry.add_named_orchestrator(name, fn, version_name=version, is_latest=latest)
    for fn in activities:
        w.add_activity(fn)
    w.start()
    return w


def _stub(address: str) -> stubs.TaskHubSidecarServiceStub:
    return stubs.TaskHubSidecarServiceStub(grpc.insecure_channel(address))


def _history(address: str, instance_id: str) -> list[pb.HistoryEvent]:
    return list(_stub(address).GetInstanceHistory(pb.GetInstanceHistoryRequest(instanceId=instance_id)).events)


def _status(c: client.TaskHubGrpcClient, instance_id: str) -> str | None:
    state = c.get_orchestration_state(instance_id)
    return None if state is None else state.runtime_status.name


def _until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def activities(address: str) -> dict:
    c = client.TaskHubGrpcClient(host_address=address)
    w = _worker(address, two_activities, activities=[whoami])
    try:
        iid = c.schedule_new_orchestration(two_activities)
        state = c.wait_for_orchestration_completion(iid, timeout=WAIT)
    finally:
        w.stop()
    events = _history(address, iid)
    return {"instanceId": iid, "status": state.runtime_status.name, "output": json.loads(state.serialized_output),
            "scheduled": [e.taskScheduled.taskExecutionId for e in events if e.HasField("taskScheduled")],
            "completed": [e.taskCompleted.taskExecutionId for e in events if e.HasField("taskCompleted")]}


def flow_scenario(address: str) -> dict:
    c = client.TaskHubGrpcClient(host_address=address)
    w = _worker(address, flow, double)
    try:
        iid = c.schedule_new_orchestration(flow, input=21)
        c.wait_for_orchestration_start(iid, timeout=WAIT)
        c.raise_orchestration_event(iid, "go", data="went")
        state = c.wait_for_orchestration_completion(iid, timeout=WAIT)
    finally:
        w.stop()
    kinds = [e.WhichOneof("eventType") for e in _history(address, iid)]
    return {"status": state.runtime_status.name, "output": json.loads(state.serialized_output), "events": kinds}


def lifecycle(address: str) -> dict:
    c = client.TaskHubGrpcClient(host_address=address)
    stub = _stub(address)
    seen = {}
    w = _worker(address, waiter)
    try:
        iid = c.schedule_new_orchestration(waiter)
        c.wait_for_orchestration_start(iid, timeout=WAIT)
        c.suspend_orchestration(iid)
        seen["suspended"] = _until(lambda: _status(c, iid) == "SUSPENDED" and "SUSPENDED", "suspended")
        c.resume_orchestration(iid)
        seen["resumed"] = _until(lambda: _status(c, iid) == "RUNNING" and "RUNNING", "resumed")
        c.terminate_orchestration(iid, output="stop")
        seen["terminated"] = c.wait_for_orchestration_completion(iid, timeout=WAIT).runtime_status.name
        seen["purged"] = stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId=iid)).deletedInstanceCount
        seen["after_purge"] = _status(c, iid)
        running = c.schedule_new_orchestration(waiter)
        c.wait_for_orchestration_start(running, timeout=WAIT)
        seen["purge_running"] = stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId=running)).deletedInstanceCount
        seen["forced"] = stub.PurgeInstances(
            pb.PurgeInstancesRequest(instanceId=running, force=True)).deletedInstanceCount
        seen["after_force"] = _status(c, running)
    finally:
        w.stop()
    return seen


def versioning(address: str) -> dict:
    """A patch met on v2 is recorded; a worker without v2 stalls the workflow; with v2 back it goes on."""
    c = client.TaskHubGrpcClient(host_address=address)
    v2 = [(patched_v2, "wf", "v2", True)]
    w = _worker(address, versions=v2)
    try:
        iid = c.schedule_new_orchestration("wf")
        c.wait_for_orchestration_start(iid, timeout=WAIT)
        _until(lambda: any(e.HasField("eventRaised") or e.HasField("orchestratorStarted") for e in _history(address, iid)),
               "the first episode")
    finally:
        w.stop()
    started = [e.orchestratorStarted.version for e in _history(address, iid) if e.HasField("orchestratorStarted")]
    w = _worker(address, versions=[(plain_v1, "wf", "v1", True)])
    try:
        c.raise_orchestration_event(iid, "go", data=1)
        stalled = _until(lambda: _status(c, iid) == "STALLED" and any(
            e.HasField("executionStalled") for e in _history(address, iid)), "the stall")
    finally:
        w.stop()
    w = _worker(address, versions=v2)
    try:
        c.resume_orchestration(iid)
        state = c.wait_for_orchestration_completion(iid, timeout=WAIT)
    finally:
        w.stop()
    return {"versions": [v.name for v in started], "patches": [list(v.patches) for v in started],
            "stalled": bool(stalled), "status": state.runtime_status.name,
            "output": json.loads(state.serialized_output)}


def list_ids(address: str, count: int) -> dict:
    c = client.TaskHubGrpcClient(host_address=address)
    started = [c.schedule_new_orchestration(same, instance_id=f"list-{uuid.uuid4().hex[:8]}") for _ in range(count)]
    stub = _stub(address)
    ids, token, pages = [], "", 0
    while True:
        page = stub.ListInstanceIDs(pb.ListInstanceIDsRequest(pageSize=2, continuationToken=token))
        ids += list(page.instanceIds)
        pages += 1
        token = page.continuationToken
        if not token:
            break
    try:
        _history(address, "no-such-instance")
        unknown = "OK"
    except grpc.RpcError as exc:
        unknown = exc.code().name
    return {"started": started, "listed": ids, "pages": pages, "history_of_unknown": unknown}


def run_same(address: str, count: int, metadata=None) -> dict:
    """Start ``count`` instances of ``same`` (a Dapr worker runs elsewhere) and return their outputs."""
    c = client.TaskHubGrpcClient(host_address=address, metadata=metadata)
    ids = [c.schedule_new_orchestration("same") for _ in range(count)]
    outputs = [json.loads(c.wait_for_orchestration_completion(i, timeout=WAIT).serialized_output) for i in ids]
    return {"ids": ids, "outputs": outputs}


def get_status(address: str, instance_id: str) -> dict:
    return {"status": _status(client.TaskHubGrpcClient(host_address=address), instance_id)}


def worker_same(address: str, metadata=None) -> None:
    """A Dapr worker of ``same`` until stdin closes."""
    w = _worker(address, same, metadata=metadata)
    _until(w.is_worker_ready, "the worker's stream")
    print("READY", flush=True)
    sys.stdin.read()
    w.stop()


def auth(address: str, client_token: str, worker_token: str) -> dict:
    """The status of StartInstance without a token, with a client's and with a worker's."""
    codes = {}
    for who, token in (("none", None), ("client", client_token), ("worker", worker_token)):
        metadata = None if token is None else [("authorization", f"Bearer {token}")]
        try:
            client.TaskHubGrpcClient(host_address=address, metadata=metadata).schedule_new_orchestration("same")
            codes[who] = "OK"
        except grpc.RpcError as exc:
            codes[who] = exc.code().name
    return codes


def reuse(address: str) -> dict:
    c = client.TaskHubGrpcClient(host_address=address)
    iid = f"reuse-{uuid.uuid4().hex[:8]}"
    c.schedule_new_orchestration(waiter, instance_id=iid)  # no worker: it stays PENDING
    out = {}

    def start(policy):
        try:
            c.schedule_new_orchestration(waiter, instance_id=iid, reuse_id_policy=policy)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    created = c.get_orchestration_state(iid).created_at
    out["none"] = start(None)
    out["error"] = start(pb.OrchestrationIdReusePolicy(operationStatus=[pb.ORCHESTRATION_STATUS_PENDING],
                                                       action=pb.ERROR))
    out["ignore"] = start(pb.OrchestrationIdReusePolicy(operationStatus=[pb.ORCHESTRATION_STATUS_PENDING],
                                                        action=pb.IGNORE))
    out["ignore_kept"] = c.get_orchestration_state(iid).created_at == created
    out["terminate_unlisted"] = start(pb.OrchestrationIdReusePolicy(
        operationStatus=[pb.ORCHESTRATION_STATUS_COMPLETED], action=pb.TERMINATE))
    out["terminate"] = start(pb.OrchestrationIdReusePolicy(operationStatus=[pb.ORCHESTRATION_STATUS_PENDING],
                                                           action=pb.TERMINATE))
    out["terminate_replaced"] = c.get_orchestration_state(iid).created_at != created
    out["status_after"] = _status(c, iid)
    return out


def rerun(address: str) -> dict:
    """Run a finished orchestration again from its second activity, with a new input, and from its first."""
    c = client.TaskHubGrpcClient(host_address=address)
    stub = _stub(address)
    out = {}
    w = _worker(address, two_steps, waiter, activities=[add_one])
    try:
        source = c.schedule_new_orchestration(two_steps, input=1)
        out["source"] = json.loads(c.wait_for_orchestration_completion(source, timeout=WAIT).serialized_output)
        scheduled = [e.eventId for e in _history(address, source) if e.HasField("taskScheduled")]
        reply = stub.RerunWorkflowFromEvent(pb.RerunWorkflowFromEventRequest(
            sourceInstanceID=source, eventID=scheduled[1], newInstanceID=f"rerun-{uuid.uuid4().hex[:8]}",
            input=wrappers_pb2.StringValue(value="10"),
            overwriteInput=True))
        out["from_second"] = json.loads(
            c.wait_for_orchestration_completion(reply.newInstanceID, timeout=WAIT).serialized_output)
        again = stub.RerunWorkflowFromEvent(pb.RerunWorkflowFromEventRequest(sourceInstanceID=source,
                                                                             eventID=scheduled[0]))
        out["from_first"] = json.loads(
            c.wait_for_orchestration_completion(again.newInstanceID, timeout=WAIT).serialized_output)
        out["new_id_generated"] = bool(again.newInstanceID) and again.newInstanceID != source
        running = c.schedule_new_orchestration(waiter)
        c.wait_for_orchestration_start(running, timeout=WAIT)
        for case, request in (("running", pb.RerunWorkflowFromEventRequest(sourceInstanceID=running, eventID=0)),
                              ("no_such_event", pb.RerunWorkflowFromEventRequest(sourceInstanceID=source, eventID=99)),
                              ("unknown", pb.RerunWorkflowFromEventRequest(sourceInstanceID="nope", eventID=0))):
            try:
                stub.RerunWorkflowFromEvent(request)
                out[case] = "OK"
            except grpc.RpcError as exc:
                out[case] = exc.code().name
    finally:
        w.stop()
    return out


SCENARIOS = {"activities": activities, "flow": flow_scenario, "lifecycle": lifecycle, "versioning": versioning,
             "list_ids": list_ids, "run_same": run_same, "get_status": get_status, "worker_same": worker_same,
             "auth": auth, "reuse": reuse, "rerun": rerun}

if __name__ == "__main__":
    name, address, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    result = SCENARIOS[name](address, **args)
    if result is not None:
        print(json.dumps(result), flush=True)
