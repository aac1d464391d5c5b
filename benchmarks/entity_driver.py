"""SDK side of the ``entities`` benchmark, run as a subprocess: ``python -m benchmarks.entity_driver MODE ADDRESS ...``.

It imports only ``durabletask`` (whose generated proto clashes with ours in one process) and the
SDK-only helpers of ``e2e_driver``.

* ``worker ADDRESS``: a TaskHubGrpcWorker with a counter entity, an orchestration that calls it once, the
  orchestration schedules start (it records its instance id and ``current_utc_datetime`` on its first
  episode) and the SDK's scheduled tasks (``configure_scheduled_tasks``); every entity batch is timed
  (from the start of the SDK's ``_execute_entity_batch`` to its ``CompleteEntityTask`` call, and that
  call). Prints ``READY``; then, for each ``dump`` line on stdin, one JSON line with what it recorded
  since the last dump; it stops when its stdin closes.
* ``signals ADDRESS COUNT ENTITIES PREFIX``: warm-up, ``READY``, waits for a line on stdin (the parent
  takes its CPU snapshot), sends COUNT ``add 1`` signals round-robin over ENTITIES counters (16
  threads), then reads the counters one after the other (``get_entity``, again every POLL_SECONDS until
  it holds all its signals), ``DONE``, waits for a line, one JSON line.
* ``calls ADDRESS RATE SECONDS PREFIX``: ``e2e_driver``'s ``steady`` mode with ``call_orch``: RATE
  orchestrations/s for SECONDS, each calling one of CALL_ENTITIES counters once; schedule-to-completion
  latency of each.
* ``schedules ADDRESS COUNT INTERVAL SECONDS PREFIX``: warm-up (one schedule runs once), creates COUNT
  schedules (ScheduledTaskClient, 4 threads) of ``sched_orch`` every INTERVAL seconds, their start times
  spread evenly over one interval from a whole second a few seconds ahead, each ending half an interval
  before its run after SECONDS; ``READY`` just before the first run, ``DONE`` SETTLE_SECONDS after the
  last, then reads the created time of every expected run's instance and prints one JSON line.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from . import e2e_driver
from .e2e_driver import BURST_WAIT_THREADS, SCHEDULE_THREADS, _client, _handshake, _logger, _utc, _wait

CALL_ENTITIES = 4  # calls: the counters the orchestrations call, round-robin
POLL_SECONDS = 0.02  # signals: pause between two reads of a counter that does not hold all its signals yet
SETTLE_SECONDS = 2.0  # schedules: after the last run's time, before DONE
WINDOW_MARGIN_SECONDS = 0.05  # schedules: READY this long before the first run

_lock = threading.Lock()
_runs: list[list] = []  # [instance id, current_utc_datetime (epoch ms) on its first episode, worker wall ms]
_batches: list[list] = []  # [entity id, first operation, operations, ms to the CompleteEntityTask call, ms in it]


def counter(ctx, amount):
    """A counter entity: ``add`` adds its input, any other operation reads it."""
    value = ctx.get_state(int, 0)
    if ctx.operation == "add":
        value += amount
        ctx.set_state(value)
    return value


def call_orch(ctx, n):
    """Calls counter ``c<n % CALL_ENTITIES>`` once; returns what the entity returned."""
    from durabletask.entities import EntityInstanceId

    r = yield ctx.call_entity(EntityInstanceId("counter", f"c{n % CALL_ENTITIES}"), "add", 1)
    return r


def sched_orch(ctx, _):
    """What the schedules start: records when its first episode ran (OrchestratorStarted), then returns."""
    if not ctx.is_replaying:
        started = _utc(ctx.current_utc_datetime).timestamp() * 1000
        with _lock:
            _runs.append([ctx.instance_id, started, time.time() * 1000])
    return None


class _TimedStub:
    """The worker's stub, with its CompleteEntityTask call timed."""

    def __init__(self, stub):
        self._stub, self.sent, self.done = stub, None, None

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def CompleteEntityTask(self, request, *args, **kwargs):  # noqa: N802 (the gRPC method's name)
        self.sent = time.perf_counter()
        try:
            return self._stub.CompleteEntityTask(request, *args, **kwargs)
        finally:
            self.done = time.perf_counter()


def _operations(req) -> tuple[str | None, int]:
    """(name of the first operation, operations) of an entity work item (EntityRequest or EntityBatchRequest)."""
    if hasattr(req, "operationRequests"):
        events = req.operationRequests
        first = getattr(events[0], events[0].WhichOneof("eventType")) if events else None
        return (getattr(first, "operation", None), len(events))
    return (req.operations[0].operation if req.operations else None, len(req.operations))


def _time_entity_batches(w) -> None:
    execute = w._execute_entity_batch

    def timed(req, stub, completion_token):
        t0, timed_stub = time.perf_counter(), _TimedStub(stub)
        try:
            return execute(req, timed_stub, completion_token)
        finally:
            if timed_stub.sent is not None:
                name, ops = _operations(req)
                with _lock:
                    _batches.append([req.instanceId, name, ops, round((timed_stub.sent - t0) * 1000, 3),
                                     round((timed_stub.done - timed_stub.sent) * 1000, 3)])

    w._execute_entity_batch = timed  # the stream loop looks it up on the instance for each work item


def run_worker(address: str) -> int:
    from durabletask import worker

    logger = _logger()
    w = worker.TaskHubGrpcWorker(host_address=address, logger=logger)
    w.add_entity(counter)
    w.add_orchestrator(call_orch)
    w.add_orchestrator(sched_orch)
    w.configure_scheduled_tasks()
    _time_entity_batches(w)
    logging.getLogger("durabletask.scheduled").setLevel(logging.WARNING)
    w.start()
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "dump":
            with _lock:
                out = {"runs": list(_runs), "batches": list(_batches)}
                _runs.clear()
                _batches.clear()
            print(json.dumps(out), flush=True)
    logger.setLevel(logging.CRITICAL)  # stop() cancels the work item stream and logs that as an error
    w.stop()
    return 0


def _counter_value(c, entity_id) -> int | None:
    """The counter's value; None before its first operation was applied (both servers then answer that it
    exists, with an empty state: it has signals waiting)."""
    metadata = c.get_entity(entity_id)
    raw = None if metadata is None else metadata.get_state()
    return int(raw) if raw else None


def _await_counter(c, entity_id, expected: int, deadline: float) -> tuple[int | None, int]:
    """Read a counter until it holds ``expected`` (or more, or the deadline passed): (last value, reads)."""
    reads = 0
    while True:
        reads += 1
        value = _counter_value(c, entity_id)
        if (value is not None and value >= expected) or time.perf_counter() > deadline:
            return value, reads
        time.sleep(POLL_SECONDS)


def run_signals(address: str, count: int, entities: int, prefix: str) -> int:
    from durabletask.entities import EntityInstanceId

    c = _client(address)
    warm = EntityInstanceId("counter", f"{prefix}-warm")
    for _ in range(20):
        c.signal_entity(warm, "add", 1)
    if _await_counter(c, warm, 20, time.perf_counter() + 60)[0] != 20:
        raise RuntimeError("warm-up counter did not reach 20")
    ids = [EntityInstanceId("counter", f"{prefix}-{j}") for j in range(entities)]
    expected = [count // entities + (1 if j < count % entities else 0) for j in range(entities)]
    _handshake("READY")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(SCHEDULE_THREADS) as pool:
        list(pool.map(lambda n: c.signal_entity(ids[n % entities], "add", 1), range(count)))
    signalled = time.perf_counter()
    deadline, reads, values = signalled + 300, 0, []
    for entity_id, want in zip(ids, expected):
        value, n = _await_counter(c, entity_id, want, deadline)
        values.append(value)
        reads += n
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    _handshake("DONE")
    applied = sum(min(v or 0, w) for v, w in zip(values, expected))
    print(json.dumps({"count": count, "entities": entities, "seconds": t1 - t0, "signal_seconds": signalled - t0,
                      "applied": applied, "over": sum(max((v or 0) - w, 0) for v, w in zip(values, expected)),
                      "short": sum(1 for v, w in zip(values, expected) if (v or 0) < w), "reads": reads,
                      "client_cpu_seconds": cpu1 - cpu0}), flush=True)
    return 0


def run_calls(address: str, rate: float, seconds: float, prefix: str) -> int:
    """``e2e_driver``'s steady phase (its warm-up, pacing, waiters and JSON line) with ``call_orch`` in place of
    its one-activity orchestration: both look the module's ``orch`` up when they schedule."""
    e2e_driver.orch = call_orch
    return e2e_driver.run_steady(address, rate, seconds, prefix)


def _create_schedules(sc, options: list) -> None:
    with ThreadPoolExecutor(BURST_WAIT_THREADS) as pool:  # each create waits for an orchestration to complete
        list(pool.map(sc.create_schedule, options))


def run_schedules(address: str, count: int, interval: float, seconds: float, prefix: str) -> int:
    from durabletask.scheduled import ScheduleCreationOptions, ScheduledTaskClient

    c = _client(address)
    sc = ScheduledTaskClient(c)
    step = timedelta(seconds=interval)

    def options(schedule_id: str, start: datetime, runs: int) -> ScheduleCreationOptions:
        return ScheduleCreationOptions(schedule_id=schedule_id, orchestration_name="sched_orch", interval=step,
                                       start_at=start, end_at=start + step * runs - step / 2)

    # Warm-up: one schedule that runs once, soon (entity, delayed signal, orchestration start all warm).
    warm_at = datetime.fromtimestamp(math.ceil(time.time() * 10) / 10 + 1, timezone.utc)
    _create_schedules(sc, [options(f"{prefix}-warm", warm_at, 1)])
    warm_run = f"{prefix}-warm-{warm_at.isoformat()}"
    while c.get_orchestration_state(warm_run, fetch_payloads=False) is None and time.time() < warm_at.timestamp() + 30:
        time.sleep(0.05)
    if _wait(c, warm_run)[1] != "COMPLETED":
        raise RuntimeError(f"warm-up run {warm_run} did not complete")
    # Start times: a whole second 2 s + 20 ms per schedule ahead, spread evenly over one interval (whole ms).
    first = math.ceil(time.time() + 2 + count * 0.02)
    starts = [datetime.fromtimestamp(first + (i * int(interval * 1000) // count) / 1000, timezone.utc)
              for i in range(count)]
    runs = int(round(seconds / interval))
    c0 = time.time()
    _create_schedules(sc, [options(f"{prefix}-s{i}", starts[i], runs) for i in range(count)])
    created = time.time()
    expected = {f"{prefix}-s{i}": [round((starts[i] + step * k).timestamp() * 1000) for k in range(runs)]
                for i in range(count)}
    time.sleep(max(0.0, first - WINDOW_MARGIN_SECONDS - time.time()))
    _handshake("READY")
    w0 = time.perf_counter()
    last_ms = max(ms for times in expected.values() for ms in times)
    time.sleep(max(0.0, last_ms / 1000 + SETTLE_SECONDS - time.time()))
    w1 = time.perf_counter()
    _handshake("DONE")
    ids = [(sid, ms, f"{sid}-{datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()}")
           for sid, times in expected.items() for ms in times]
    with ThreadPoolExecutor(BURST_WAIT_THREADS) as pool:
        states = list(pool.map(lambda t: c.get_orchestration_state(t[2], fetch_payloads=False), ids))
    instances = [[sid, ms, iid, None if s is None else s.runtime_status.name,
                  None if s is None else _utc(s.created_at).timestamp() * 1000]
                 for (sid, ms, iid), s in zip(ids, states)]
    print(json.dumps({"count": count, "runs_per_schedule": runs, "interval": interval, "first_ms": first * 1000,
                      "create_seconds": created - c0, "created_margin_ms": (first - created) * 1000,
                      "window_seconds": w1 - w0, "instances": instances}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, address = argv[0], argv[1]
    if mode == "worker":
        return run_worker(address)
    if mode == "signals":
        return run_signals(address, int(argv[2]), int(argv[3]), argv[4])
    if mode == "calls":
        return run_calls(address, float(argv[2]), float(argv[3]), argv[4])
    if mode == "schedules":
        return run_schedules(address, int(argv[2]), float(argv[3]), float(argv[4]), argv[5])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
