"""One failover run for the tests that kill a Redis primary under load (Sentinel and Cluster): two
replicas of the service, an SDK worker on each, starts in flight while the primary is SIGKILLed.

``run`` starts ``total`` one-activity orchestrations from 8 threads over both replicas; a start whose call
fails is tried again with the same instance id until it is acknowledged (``ALREADY_EXISTS`` after an
unknown outcome counts as acknowledged: the instance exists) or its deadline passes. After ``kill_after``
acknowledged starts ``kill()`` runs; the run measures how long until a start succeeds again. Then every
acknowledged instance must complete once, with its output, and its history must hold one completion."""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from durabletask import client, task, worker
from durabletask.internal import orchestrator_service_pb2 as pb

COMPLETED = client.OrchestrationStatus.COMPLETED
TOTAL, KILL_AFTER = 300, 60  # starts in all; acknowledged ones before the primary is killed


def plus_one(ctx, n: int) -> int:
    return n + 1


def one_step(ctx: task.OrchestrationContext, n: int):
    return (yield ctx.call_activity(plus_one, input=n))


@dataclass
class Outcome:
    acked: dict[str, int] = field(default_factory=dict)  # instance id -> n
    unacked: list[str] = field(default_factory=list)  # never acknowledged by the deadline
    first_failures: Counter = field(default_factory=Counter)  # status codes of failed attempts
    killed_at: float | None = None  # monotonic
    acked_at_kill: int = 0
    back_after: float | None = None  # seconds from the kill to the first start acknowledged after it
    last_failure_after: float = 0.0  # seconds from the kill to the last failed attempt (calls succeed after it)
    lost: list[str] = field(default_factory=list)  # acknowledged, then not found
    wrong: list[str] = field(default_factory=list)  # not COMPLETED with n + 1 by the deadline
    twice: list[str] = field(default_factory=list)  # a history with a second completion


def run(addresses: list[str], total: int, kill_after: int, kill: Callable[[], None], prefix: str,
        start_deadline: float = 60.0, complete_deadline: float = 120.0) -> Outcome:
    out = Outcome()
    lock = threading.Lock()
    workers = []
    for address in addresses:
        w = worker.TaskHubGrpcWorker(host_address=address)
        w.add_orchestrator(one_step)
        w.add_activity(plus_one)
        w.start()
        workers.append(w)
    clients = [client.TaskHubGrpcClient(host_address=address) for address in addresses]
    try:
        def start(n: int) -> None:
            iid = f"{prefix}-{n:04d}"
            c = clients[n % len(clients)]
            deadline = time.monotonic() + start_deadline
            unknown = False
            while time.monotonic() < deadline:
                try:
                    c.schedule_new_orchestration(one_step, input=n, instance_id=iid)
                except grpc.RpcError as exc:
                    with lock:
                        out.first_failures[exc.code().name] += 1
                        if out.killed_at is not None:
                            out.last_failure_after = max(out.last_failure_after, time.monotonic() - out.killed_at)
                    if exc.code() == grpc.StatusCode.ALREADY_EXISTS and unknown:
                        break  # an earlier attempt was applied
                    unknown = unknown or exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                         grpc.StatusCode.UNAVAILABLE)
                    time.sleep(0.05)  # pacing of the retries, not synchronisation
                    continue
                break
            else:
                with lock:
                    out.unacked.append(iid)
                return
            with lock:
                out.acked[iid] = n
                if out.killed_at is not None and out.back_after is None:
                    out.back_after = time.monotonic() - out.killed_at

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(start, n) for n in range(total)]
            deadline = time.monotonic() + 60
            while len(out.acked) < kill_after and time.monotonic() < deadline:
                time.sleep(0.001)
            with lock:
                out.acked_at_kill = len(out.acked)
            kill()
            with lock:
                out.killed_at = time.monotonic()
            for f in futures:
                f.result()

        reader = clients[0]
        deadline = time.monotonic() + complete_deadline
        pending = dict(out.acked)
        while pending and time.monotonic() < deadline:
            for iid in list(pending):
                try:
                    state = reader.get_orchestration_state(iid)
                except grpc.RpcError:
                    continue
                if state is not None and state.runtime_status == COMPLETED:
                    pending.pop(iid)
            time.sleep(0.1)
        for iid, n in out.acked.items():
            state = reader.get_orchestration_state(iid)
            if state is None:
                out.lost.append(iid)
            elif state.runtime_status != COMPLETED or state.serialized_output != str(n + 1):
                out.wrong.append(f"{iid}: {state.runtime_status.name} {state.serialized_output!r}")
            else:
                events = [e for chunk in reader._stub.StreamInstanceHistory(
                    pb.StreamInstanceHistoryRequest(instanceId=iid)) for e in chunk.events]
                kinds = Counter(e.WhichOneof("eventType") for e in events)
                if kinds["executionCompleted"] != 1 or kinds["executionStarted"] != 1 or kinds["taskCompleted"] != 1:
                    out.twice.append(f"{iid}: {dict(kinds)}")
    finally:
        for w in workers:
            w.stop()
        for c in clients:
            c.close()
    return out


def kill_under_load(servers, kill_primary: Callable[[], int], wait_for_takeover: Callable[[int], None],
                    bring_back: Callable[[int], None], name: str, capsys) -> None:
    """:func:`run` on the service replicas ``servers`` (ServerProcess), stopped at the end: ``kill_primary()``
    SIGKILLs the primary (returns its port); once ``wait_for_takeover(port)`` returns, ``bring_back(port)``
    starts it again (as a restarted pod). Prints the figures and checks that nothing acknowledged was lost,
    that each acknowledged instance completed exactly once, and that calls succeeded again."""
    marks: dict[str, float] = {}
    back = threading.Event()

    def kill() -> None:
        killed = time.monotonic()
        old = kill_primary()

        def restart() -> None:
            wait_for_takeover(old)
            marks["promoted"] = time.monotonic() - killed
            bring_back(old)
            back.set()
        threading.Thread(target=restart, daemon=True).start()

    try:
        out = run([s.address for s in servers], TOTAL, KILL_AFTER, kill, prefix=name)
        assert back.is_set()
        assert all(s.proc.poll() is None for s in servers), "a replica of the service died"
    finally:
        for s in servers:
            s.stop()
    with capsys.disabled():
        print(f"\n{name} failover: a replica took over {marks['promoted']:.1f} s after the kill; {len(out.acked)} "
              f"acknowledged ({out.acked_at_kill} before the kill), {len(out.unacked)} never acknowledged, first ack "
              f"after the kill {out.back_after:.1f} s, last failed attempt {out.last_failure_after:.1f} s after it, "
              f"failed attempts {dict(out.first_failures)}, lost {len(out.lost)}")
    assert not out.lost, f"acknowledged starts lost: {out.lost[:5]}"
    assert not out.wrong, out.wrong[:5]
    assert not out.twice, out.twice[:5]
    assert not out.unacked, f"starts never acknowledged: {out.unacked[:5]}"
    assert out.back_after is not None and len(out.acked) - out.acked_at_kill > 100
