"""SDK side of the ``e2e`` benchmark, run as a subprocess: ``python -m benchmarks.e2e_driver MODE ADDRESS ...``.

It imports only ``durabletask`` (whose generated proto clashes with ours in one process).

* ``worker ADDRESS``: a TaskHubGrpcWorker with the benchmark orchestration and activity; prints
  ``READY`` once started and runs until its stdin closes.
* ``burst ADDRESS COUNT PREFIX``: warm-up, prints ``READY``, waits for a line on stdin (the parent
  takes its CPU snapshot), schedules COUNT orchestrations at once, waits until all completed,
  prints ``DONE``, waits for a line on stdin, then prints one JSON line with the results.
* ``steady ADDRESS RATE SECONDS PREFIX``: same protocol; schedules RATE orchestrations/s for
  SECONDS and records schedule-to-completion latency of each.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SCHEDULE_THREADS = 16
# The reference serves on a ThreadPoolExecutor(max_workers=10) and a WaitForInstanceCompletion holds one
# of those threads until the instance completes: more waiters than that starve the worker's own calls
# (a deadlock until the waits time out). So few waiters: the burst walks the ids in schedule order.
BURST_WAIT_THREADS = 4
STEADY_WAIT_THREADS = 6


def act(ctx, x):
    return x


def orch(ctx, x):
    r = yield ctx.call_activity(act, input=x)
    return r


def _logger() -> logging.Logger:
    logger = logging.getLogger("e2e_driver")
    logger.setLevel(logging.WARNING)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.propagate = False
    return logger


def run_worker(address: str) -> int:
    from durabletask import worker

    logger = _logger()
    w = worker.TaskHubGrpcWorker(host_address=address, logger=logger)
    w.add_orchestrator(orch)
    w.add_activity(act)
    w.start()
    print("READY", flush=True)
    sys.stdin.read()
    logger.setLevel(logging.CRITICAL)  # stop() cancels the work item stream and logs that as an error
    w.stop()
    return 0


def _handshake(tag: str) -> None:
    print(tag, flush=True)
    sys.stdin.readline()


def _client(address: str):
    from durabletask import client

    return client.TaskHubGrpcClient(host_address=address, logger=_logger())


def _warm_up(c, prefix: str) -> None:
    """A few orchestrations end to end: the worker is connected and every code path is warm."""
    ids = [c.schedule_new_orchestration(orch, input=i, instance_id=f"{prefix}-warm-{i}") for i in range(10)]
    for i in ids:
        state = c.wait_for_orchestration_completion(i, timeout=60)
        if state is None or state.runtime_status.name != "COMPLETED":
            raise RuntimeError(f"warm-up orchestration {i} did not complete: {state}")


def _wait(c, instance_id: str) -> tuple[float, str]:
    state = c.wait_for_orchestration_completion(instance_id, timeout=300)
    return time.perf_counter(), (state.runtime_status.name if state is not None else "MISSING")


def run_burst(address: str, count: int, prefix: str) -> int:
    c = _client(address)
    _warm_up(c, prefix)
    ids = [f"{prefix}-{i}" for i in range(count)]
    _handshake("READY")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(SCHEDULE_THREADS) as pool:
        list(pool.map(lambda i: c.schedule_new_orchestration(orch, input=i, instance_id=ids[i]), range(count)))
    scheduled = time.perf_counter()
    with ThreadPoolExecutor(BURST_WAIT_THREADS) as pool:
        done = list(pool.map(lambda i: _wait(c, i), ids))
    t1 = max(t for t, _ in done)
    cpu1 = time.process_time()
    _handshake("DONE")
    statuses: dict[str, int] = {}
    for _, s in done:
        statuses[s] = statuses.get(s, 0) + 1
    print(json.dumps({"count": count, "seconds": t1 - t0, "schedule_seconds": scheduled - t0,
                      "completed": statuses.get("COMPLETED", 0), "statuses": statuses,
                      "client_cpu_seconds": cpu1 - cpu0}), flush=True)
    return 0


def run_steady(address: str, rate: float, seconds: float, prefix: str) -> int:
    c = _client(address)
    _warm_up(c, prefix)
    count = int(rate * seconds)
    results: list = [None] * count
    _handshake("READY")
    cpu0 = time.process_time()
    pool = ThreadPoolExecutor(STEADY_WAIT_THREADS)
    lock = threading.Lock()
    late = 0
    waits_queued = 0  # waits that started > 20 ms after their schedule call returned (all waiters busy)

    def wait_one(n: int, instance_id: str, started: float, submitted: float) -> None:
        nonlocal waits_queued
        if time.perf_counter() - submitted > 0.02:
            with lock:
                waits_queued += 1
        finished, status = _wait(c, instance_id)
        with lock:
            results[n] = (started, finished, status)

    t0 = time.perf_counter()
    for n in range(count):
        due = t0 + n / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.1 / rate:
            late += 1
        started = time.perf_counter()
        instance_id = c.schedule_new_orchestration(orch, input=n, instance_id=f"{prefix}-{n}")
        pool.submit(wait_one, n, instance_id, started, time.perf_counter())
    pool.shutdown(wait=True)
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    _handshake("DONE")
    latencies = sorted((f - s) * 1000 for s, f, st in results if st == "COMPLETED")
    print(json.dumps({"count": count, "seconds": t1 - t0, "completed": len(latencies), "late_schedules": late,
                      "waits_queued": waits_queued,
                      "latencies_ms": latencies, "client_cpu_seconds": cpu1 - cpu0}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, address = argv[0], argv[1]
    if mode == "worker":
        return run_worker(address)
    if mode == "burst":
        return run_burst(address, int(argv[2]), argv[3])
    if mode == "steady":
        return run_steady(address, float(argv[2]), float(argv[3]), argv[4])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
