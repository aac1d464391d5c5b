"""Show delayed start working: the official durabletask SDK schedules an instance 2 s ahead.

Starts the service on the embedded store (a subprocess) and an SDK worker, then
uses the SDK client to schedule an orchestration two seconds in the future and
prints its state before its due time, the service's own promotion log line, and
the result the worker produced once it ran — at its time, not before.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

from durabletask import client, task, worker


def greet(ctx: task.OrchestrationContext, who: dict) -> str:
    return f"Hello {who['to']}, it is {ctx.current_utc_datetime.isoformat(timespec='milliseconds')}"


def main() -> int:
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--port", "0", "--log-level", "INFO"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = proc.stdout.readline().split()[-1]  # "READY host:port"
    promoted = threading.Event()

    def relay_log() -> None:
        for line in proc.stderr:
            if "WARNING" in line or "promoted" in line:
                print("  [service]", line.rstrip())
            if "promoted" in line:
                promoted.set()

    threading.Thread(target=relay_log, daemon=True).start()
    w = worker.TaskHubGrpcWorker(host_address=address)
    w.add_orchestrator(greet)
    w.start()
    try:
        c = client.TaskHubGrpcClient(host_address=address)
        start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
        iid = c.schedule_new_orchestration(greet, input={"to": "world"}, start_at=start_at)
        print(f"scheduled instance {iid} to start at {start_at.isoformat(timespec='milliseconds')}")
        state = c.get_orchestration_state(iid)
        print(f"  before: status={state.runtime_status.name} input={state.serialized_input}")
        try:
            c.wait_for_orchestration_start(iid, timeout=1)
        except TimeoutError:
            print("  wait_for_orchestration_start(timeout=1): not started yet, as scheduled")
        if not promoted.wait(timeout=10):
            print("the service did not report the promotion within 10 s")
            return 1
        print(f"  promoted at {datetime.now(timezone.utc).isoformat(timespec='milliseconds')} "
              f"(due {start_at.isoformat(timespec='milliseconds')})")
        state = c.wait_for_orchestration_completion(iid, timeout=30)
        print(f"  after:  status={state.runtime_status.name} output={state.serialized_output}")
        return 0 if state.runtime_status == client.OrchestrationStatus.COMPLETED else 1
    finally:
        w.stop()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
