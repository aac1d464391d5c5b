"""SDK side of the ``e2e`` and ``timers`` benchmarks, run as a subprocess:
``python -m benchmarks.e2e_driver MODE ADDRESS ...``.

It imports only ``durabletask`` (whose generated proto clashes with ours in one process).

* ``worker ADDRESS``: a TaskHubGrpcWorker with the benchmark orchestrations and activity; prints
  ``READY`` once started and runs until its stdin closes.
* ``burst ADDRESS COUNT PREFIX``: warm-up, prints ``READY``, waits for a line on stdin (the parent
  takes its CPU snapshot), schedules COUNT orchestrations at once, waits until all completed,
  prints ``DONE``, waits for a line on stdin, then prints one JSON line with the results.
* ``steady ADDRESS RATE SECONDS PREFIX``: same protocol; schedules RATE orchestrations/s for
  SECONDS and records schedule-to-completion latency of each.
* ``timers ADDRESS COUNT WINDOW LEAD PREFIX``: warm-up, then schedules COUNT timer orchestrations whose
  timers are due evenly over WINDOW seconds starting LEAD seconds after the first schedule call; waits
  until each has run its first episode; the same READY/DONE protocol around the window (from just before
  the first fire time to SETTLE_SECONDS after the last); then reads each instance's history and prints
  one JSON line with the fire lag and episode time of each timer (see :func:`_fire_and_episode`).
* ``short-timers ADDRESS COUNT WINDOW DELAY PREFIX``: warm-up, ``READY``, then schedules COUNT timer
  orchestrations evenly over WINDOW seconds, each with its timer due DELAY seconds after its schedule
  call; ``DONE`` SETTLE_SECONDS after the last fire time; then the same JSON line.
* ``hops ADDRESS COUNT PREFIX``: a worker and a client in this process; after a warm-up, COUNT
  orchestrations one at a time (GAP_SECONDS apart), each timed hop by hop: the StartInstance call, then
  when the worker received the first episode, the activity, the second episode, and when the client's
  wait returned; prints one JSON line of the median of each hop (ms). No READY/DONE protocol.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

SCHEDULE_THREADS = 16
# The reference serves on a ThreadPoolExecutor(max_workers=10) and a WaitForInstanceCompletion holds one
# of those threads until the instance completes: more waiters than that starve the worker's own calls
# (a deadlock until the waits time out). So few waiters: the burst walks the ids in schedule order.
BURST_WAIT_THREADS = 4
STEADY_WAIT_THREADS = 6
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ARMED = "armed"
ARMED_POLL_SECONDS = 0.1
WINDOW_MARGIN_SECONDS = 0.05  # the parent's CPU snapshot is taken this long before the first fire time
SETTLE_SECONDS = 1.0  # after the last fire time, before the second CPU snapshot and the histories


def act(ctx, x):
    return x


def orch(ctx, x):
    r = yield ctx.call_activity(act, input=x)
    return r


def timer_orch(ctx, fire_at_ms):
    """Waits on a durable timer due at an absolute time (epoch ms, so every instance knows its own),
    then returns; the custom status tells the client that the first episode is done."""
    ctx.set_custom_status(ARMED)
    yield ctx.create_timer(EPOCH + timedelta(milliseconds=fire_at_ms))
    return fire_at_ms


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
    w.add_orchestrator(timer_orch)
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


def _utc(naive: datetime) -> datetime:
    """The SDK's OrchestrationState times are naive UTC; its history events carry UTC already."""
    return naive.replace(tzinfo=timezone.utc)


def _warm_up_timers(c, prefix: str) -> float:
    """A few timer orchestrations end to end (every code path warm). Returns how far (ms) a creation
    time the server stamped fell outside the client's call around it: about 0 when the server's clock
    is this machine's (ours stamps whole ms, so up to 1)."""
    outside, ids = 0.0, []
    for i in range(10):
        before = time.time()
        ids.append(c.schedule_new_orchestration(timer_orch, input=int(before * 1000) + 200,
                                                instance_id=f"{prefix}-warm-{i}"))
        after = time.time()
        created = _utc(c.get_orchestration_state(ids[-1], fetch_payloads=False).created_at).timestamp()
        outside = max(outside, before - created, created - after)
    for i in ids:
        state = c.wait_for_orchestration_completion(i, fetch_payloads=False, timeout=60)
        if state is None or state.runtime_status.name != "COMPLETED":
            raise RuntimeError(f"warm-up timer orchestration {i} did not complete: {state}")
    return outside * 1000


def _wait_armed(c, ids: list[str], first_fire_ms: int) -> tuple[int, float]:
    """Poll until every instance finished its first episode (its timer is stored), but not past the first
    fire time; returns how many were not armed by then and when (epoch s) the polling ended."""
    left = ids
    with ThreadPoolExecutor(BURST_WAIT_THREADS) as pool:
        while left and time.time() * 1000 < first_fire_ms:
            states = list(pool.map(c.get_orchestration_state, left))
            left = [i for i, s in zip(left, states) if s is None or s.get_custom_status() != ARMED]
            if left:
                time.sleep(ARMED_POLL_SECONDS)
    return len(left), time.time()


def _fire_and_episode(history: list, state) -> tuple[float, float] | None:
    """(fire lag, episode time) in ms of one timer: the OrchestratorStarted event of the episode that
    delivered the TimerFired event is when the server dispatched it; lag = that - fireAt, episode = the
    instance's last update (its completion) - that. None if the history holds no fired timer."""
    from durabletask import history as h

    started = None
    for event in history:
        if isinstance(event, h.OrchestratorStartedEvent):
            started = event.timestamp
        elif isinstance(event, h.TimerFiredEvent):
            if started is None:
                return None
            return ((started - event.fire_at).total_seconds() * 1000,
                    (_utc(state.last_updated_at) - started).total_seconds() * 1000)
    return None


def _timer_results(c, ids: list[str]) -> dict:
    """Wait for every instance and read its history: statuses, and the fire lag and episode time of each timer."""
    with ThreadPoolExecutor(BURST_WAIT_THREADS) as pool:
        states = list(pool.map(lambda i: c.wait_for_orchestration_completion(i, fetch_payloads=False, timeout=60),
                               ids))
        histories = list(pool.map(c.get_orchestration_history, ids))
    statuses: dict[str, int] = {}
    for s in states:
        name = s.runtime_status.name if s is not None else "MISSING"
        statuses[name] = statuses.get(name, 0) + 1
    measured = [m for m in (_fire_and_episode(hist, s) for hist, s in zip(histories, states) if s is not None)
                if m is not None]
    return {"statuses": statuses, "measured": len(measured), "lags_ms": [round(lag, 3) for lag, _ in measured],
            "episodes_ms": [round(ep, 3) for _, ep in measured]}


def run_timers(address: str, count: int, window: float, lead: float, prefix: str) -> int:
    c = _client(address)
    outside_ms = _warm_up_timers(c, prefix)
    ids = [f"{prefix}-{i}" for i in range(count)]
    t0 = time.time()
    first_ms = int((t0 + lead) * 1000)
    fire_ms = [first_ms + i * int(window * 1000) // count for i in range(count)]
    with ThreadPoolExecutor(SCHEDULE_THREADS) as pool:
        list(pool.map(lambda i: c.schedule_new_orchestration(timer_orch, input=fire_ms[i], instance_id=ids[i]),
                      range(count)))
    scheduled = time.time()
    unarmed, armed_at = _wait_armed(c, ids, first_ms)
    time.sleep(max(0.0, first_ms / 1000 - WINDOW_MARGIN_SECONDS - time.time()))
    _handshake("READY")
    w0 = time.perf_counter()
    time.sleep(max(0.0, fire_ms[-1] / 1000 + SETTLE_SECONDS - time.time()))
    w1 = time.perf_counter()
    _handshake("DONE")
    print(json.dumps({"count": count, **_timer_results(c, ids), "window_seconds": w1 - w0,
                      "schedule_seconds": scheduled - t0, "armed_margin_ms": first_ms - armed_at * 1000,
                      "unarmed_at_first_fire": unarmed, "clock_outside_ms": outside_ms}), flush=True)
    return 0


def run_short_timers(address: str, count: int, window: float, delay: float, prefix: str) -> int:
    c = _client(address)
    outside_ms = _warm_up_timers(c, prefix)
    ids = [f"{prefix}-{i}" for i in range(count)]
    _handshake("READY")
    w0, t0 = time.perf_counter(), time.time()
    for n, instance_id in enumerate(ids):
        time.sleep(max(0.0, t0 + n * window / count - time.time()))
        c.schedule_new_orchestration(timer_orch, input=int((time.time() + delay) * 1000), instance_id=instance_id)
    time.sleep(max(0.0, t0 + window + delay + SETTLE_SECONDS - time.time()))
    w1 = time.perf_counter()
    _handshake("DONE")
    print(json.dumps({"count": count, **_timer_results(c, ids), "window_seconds": w1 - w0,
                      "clock_outside_ms": outside_ms}), flush=True)
    return 0


GAP_SECONDS = 0.01
HOPS = ("start call", "start -> episode 1", "episode 1 -> activity", "activity -> episode 2",
        "episode 2 -> wait returns", "total")


def run_hops(address: str, count: int, prefix: str) -> int:
    from durabletask import worker

    received: dict[str, dict[str, float]] = {}
    w = worker.TaskHubGrpcWorker(host_address=address, logger=_logger())
    w.add_orchestrator(orch)
    w.add_activity(act)
    execute_orchestrator, execute_activity = w._execute_orchestrator, w._execute_activity  # noqa: SLF001

    def orchestrator(req, *args):
        received.setdefault(req.instanceId, {})["episode 2" if len(req.pastEvents) else "episode 1"] = \
            time.perf_counter()
        return execute_orchestrator(req, *args)

    def activity(req, *args):
        received.setdefault(req.orchestrationInstance.instanceId, {})["activity"] = time.perf_counter()
        return execute_activity(req, *args)

    w._execute_orchestrator, w._execute_activity = orchestrator, activity  # noqa: SLF001 - timing hooks
    w.start()
    try:
        c = _client(address)
        _warm_up(c, prefix)
        hops: list[list[float]] = []
        for n in range(count):
            instance_id = f"{prefix}-{n}"
            t0 = time.perf_counter()
            c.schedule_new_orchestration(orch, input=n, instance_id=instance_id)
            t1 = time.perf_counter()
            c.wait_for_orchestration_completion(instance_id, timeout=60)
            t2 = time.perf_counter()
            r = received[instance_id]
            hops.append([t1 - t0, r["episode 1"] - t0, r["activity"] - r["episode 1"], r["episode 2"] - r["activity"],
                         t2 - r["episode 2"], t2 - t0])
            time.sleep(GAP_SECONDS)
    finally:
        w._logger.setLevel(logging.CRITICAL)  # noqa: SLF001 - stop() cancels the stream and logs that
        w.stop()
    print(json.dumps({name: sorted(h[k] for h in hops)[len(hops) // 2] * 1000 for k, name in enumerate(HOPS)}),
          flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, address = argv[0], argv[1]
    if mode == "worker":
        return run_worker(address)
    if mode == "burst":
        return run_burst(address, int(argv[2]), argv[3])
    if mode == "steady":
        return run_steady(address, float(argv[2]), float(argv[3]), argv[4])
    if mode == "timers":
        return run_timers(address, int(argv[2]), float(argv[3]), float(argv[4]), argv[5])
    if mode == "hops":
        return run_hops(address, int(argv[2]), argv[3])
    if mode == "short-timers":
        return run_short_timers(address, int(argv[2]), float(argv[3]), float(argv[4]), argv[5])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
