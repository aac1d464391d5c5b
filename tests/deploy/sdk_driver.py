"""The official durabletask SDK in its own process, for the deploy/ tests (whose pytest process also
holds the service's protobuf module, which cannot share a process with the SDK's).

    python sdk_driver.py roundtrip ADDRESS CLIENT_TOKEN WORKER_TOKEN
        Hello, then an orchestration with one activity, run by an SDK worker; prints one JSON line.
    python sdk_driver.py worker ADDRESS WORKER_TOKEN REDIS_URL KEY
        An SDK worker with the `chain` orchestration and its `slow_step` activity (which records
        each execution in Redis lists under KEY); runs until SIGTERM.
    python sdk_driver.py client ADDRESS CLIENT_TOKEN COUNT STEPS SECONDS SPREAD TIMEOUT
        Schedules COUNT `chain` orchestrations of STEPS activities of SECONDS each, the k-th due
        k*SPREAD seconds from now; prints "SCHEDULED"; waits until every one ended (or TIMEOUT), then
        reads each one's history and prints one JSON line with what it found.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import grpc
from durabletask import client, task, worker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from google.protobuf import empty_pb2

TERMINAL = {client.OrchestrationStatus.COMPLETED, client.OrchestrationStatus.FAILED,
            client.OrchestrationStatus.TERMINATED}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def retrying(call, what: str, timeout: float = 60.0):
    """A call retried while the service is unreachable (a replica going away under the proxy)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.CANCELLED) or time.monotonic() > deadline:
                raise
            print(f"retrying {what}: {exc.code().name}", file=sys.stderr, flush=True)
            time.sleep(0.2)


# -- roundtrip ------------------------------------------------------------------------------------

def hello_activity(ctx: task.ActivityContext, name: str) -> str:
    return f"hello {name}"


def greet(ctx: task.OrchestrationContext, name: str):
    return (yield ctx.call_activity(hello_activity, input=name))


def roundtrip(address: str, client_token: str, worker_token: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stubs.TaskHubSidecarServiceStub(channel).Hello(empty_pb2.Empty(), metadata=bearer(client_token), timeout=10)
        try:
            stubs.TaskHubSidecarServiceStub(channel).Hello(empty_pb2.Empty(), timeout=10)
            anonymous = "OK"
        except grpc.RpcError as exc:
            anonymous = exc.code().name
    c = client.TaskHubGrpcClient(host_address=address, metadata=bearer(client_token))
    pending_id = c.schedule_new_orchestration(greet, input="pending", instance_id=f"pending-{os.getpid()}",
                                              start_at=datetime.now(timezone.utc) + timedelta(hours=1))
    pending = c.get_orchestration_state(pending_id)
    w = worker.TaskHubGrpcWorker(host_address=address, metadata=bearer(worker_token))
    w.add_orchestrator(greet)
    w.add_activity(hello_activity)
    w.start()
    try:
        iid = c.schedule_new_orchestration(greet, input="image")
        state = c.wait_for_orchestration_completion(iid, timeout=60)
    finally:
        w.stop()
    print(json.dumps({"hello": "OK", "anonymous_hello": anonymous,
                      "pending": pending.runtime_status.name if pending else None,
                      "status": state.runtime_status.name if state else None,
                      "output": json.loads(state.serialized_output) if state and state.serialized_output else None}),
          flush=True)
    c.close()
    return 0


# -- rolling restart: worker ------------------------------------------------------------------------

def run_worker(address: str, token: str, redis_url: str, key: str) -> int:
    import redis

    r = redis.Redis.from_url(redis_url)

    def slow_step(ctx: task.ActivityContext, arg: dict) -> str:
        item = f"{arg['iid']}:{arg['step']}"
        r.rpush(f"{key}:started", json.dumps({"item": item, "pid": os.getpid(), "t": time.time()}))
        time.sleep(arg["seconds"])
        r.hincrby(f"{key}:effects", item, 1)  # the side effect: once per execution that got this far
        r.rpush(f"{key}:finished", json.dumps({"item": item, "pid": os.getpid(), "t": time.time()}))
        return item

    def chain(ctx: task.OrchestrationContext, arg: dict):
        results = []
        for step in range(arg["steps"]):
            results.append((yield ctx.call_activity(slow_step, input={"iid": ctx.instance_id, "step": step,
                                                                       "seconds": arg["seconds"]})))
        return results

    w = worker.TaskHubGrpcWorker(host_address=address, metadata=bearer(token),
                                 concurrency_options=worker.ConcurrencyOptions(maximum_thread_pool_workers=64))
    w.add_orchestrator(chain)
    w.add_activity(slow_step)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    w.start()
    print("WORKER STARTED", flush=True)
    stop.wait()
    w.stop()
    return 0


# -- rolling restart: client ------------------------------------------------------------------------

def run_client(address: str, token: str, count: int, steps: int, seconds: float, spread: float,
               timeout: float) -> int:
    c = client.TaskHubGrpcClient(host_address=address, metadata=bearer(token))
    now = datetime.now(timezone.utc)
    ids = [f"rolling-{os.getpid()}-{k}" for k in range(count)]
    for k, iid in enumerate(ids):
        def schedule(iid=iid, k=k):
            try:
                return c.schedule_new_orchestration("chain", input={"steps": steps, "seconds": seconds},
                                                    instance_id=iid, start_at=now + timedelta(seconds=k * spread))
            except grpc.RpcError as exc:  # a retried start that had gone through
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return iid
                raise
        retrying(schedule, f"schedule {iid}")
    print("SCHEDULED " + json.dumps(ids), flush=True)
    deadline = time.monotonic() + timeout
    states: dict[str, object] = {}
    while time.monotonic() < deadline:
        for iid in ids:
            if iid in states and states[iid].runtime_status in TERMINAL:
                continue
            states[iid] = retrying(lambda iid=iid: c.get_orchestration_state(iid), f"get {iid}")
        if all(s is not None and s.runtime_status in TERMINAL for s in states.values()):
            break
        time.sleep(0.5)
    report = {"instances": {}}
    with grpc.insecure_channel(address) as channel:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        for iid in ids:
            s = states.get(iid)
            entry = {"status": None if s is None else s.runtime_status.name,
                     "output": json.loads(s.serialized_output) if s is not None and s.serialized_output else None}
            if s is not None:
                def history(iid=iid):
                    events = []
                    for chunk in stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId=iid),
                                                            metadata=bearer(token), timeout=10):
                        events.extend(chunk.events)
                    return events
                events = retrying(history, f"history {iid}")
                scheduled = [e.eventId for e in events if e.WhichOneof("eventType") == "taskScheduled"]
                completed = [e.taskCompleted.taskScheduledId for e in events
                             if e.WhichOneof("eventType") == "taskCompleted"]
                entry.update(scheduled=len(scheduled), completed=len(completed),
                             duplicate_completions=len(completed) - len(set(completed)),
                             unmatched=len(set(completed) - set(scheduled)))
            report["instances"][iid] = entry
    print(json.dumps(report), flush=True)
    c.close()
    return 0


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "roundtrip":
        return roundtrip(*args)
    if mode == "worker":
        return run_worker(*args)
    if mode == "client":
        address, token, count, steps, seconds, spread, timeout = args
        return run_client(address, token, int(count), int(steps), float(seconds), float(spread), float(timeout))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
