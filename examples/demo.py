"""Show delayed start working: the official durabletask SDK schedules an instance 2 s ahead.

Starts the service on the embedded store (a subprocess), then uses the SDK client
to schedule an orchestration two seconds in the future and prints its state
before and after its due time, with the service's own promotion log line.
Until workers are supported the instance stays PENDING after promotion: it is
then in the ready queue, waiting for a worker.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

from durabletask import client


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
    try:
        c = client.TaskHubGrpcClient(host_address=address)
        start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
        iid = c.schedule_new_orchestration("greet", input={"to": "world"}, start_at=start_at)
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
        state = c.get_orchestration_state(iid)
        print(f"  after:  status={state.runtime_status.name} (in the ready queue, waiting for a worker)")
        return 0
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
