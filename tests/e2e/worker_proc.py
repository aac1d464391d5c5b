"""A durabletask SDK worker in its own process, for tests that kill it: `python worker_proc.py ADDRESS hang|quick`."""
from __future__ import annotations

import sys
import threading
import time

from durabletask import task, worker


def slow_step(ctx, n: int) -> int:
    if sys.argv[2] == "hang":
        time.sleep(600)  # killed long before this returns
    return n + 1


def two_steps(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_activity(slow_step, input=n)
    return a


if __name__ == "__main__":
    w = worker.TaskHubGrpcWorker(host_address=sys.argv[1])
    w.add_orchestrator(two_steps)
    w.add_activity(slow_step)
    w.start()
    print("WORKER READY", flush=True)
    threading.Event().wait()
