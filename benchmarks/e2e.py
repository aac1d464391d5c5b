"""End to end with the official SDK: TaskHubGrpcWorker runs a one-activity orchestration, ours against the reference.

The orchestration is ``orch(ctx, x): r = yield ctx.call_activity(act, input=x); return r``.
Per side (the SDK's in-memory backend, ``ref_backend.py``; ours, ``dt-scheduler serve`` on
a fresh redis-server) the same load runs against a fresh server:

* burst: N orchestrations scheduled at once by the SDK client (16 threads), then waited for with
  ``wait_for_orchestration_completion`` by 4 threads walking the ids in schedule order (the reference
  serves on 10 threads and a wait holds one, so more waiters would starve the worker); orchestrations/s from the first schedule
  to the last completion, server CPU per orchestration (server process from /proc, plus the
  redis-server's INFO cpu for ours) and the SDK worker process's CPU per orchestration;
* steady: orchestrations scheduled at a fixed rate; schedule-to-completion latency as the client
  observes it (``wait_for_orchestration_completion`` on a pool of 6 threads, one per instance in flight).

The SDK worker and the SDK client run in subprocesses (``benchmarks/e2e_driver.py``; the SDK's
generated proto clashes with ours in one process): one worker process and one client process
per phase. CPU is read by this process around the timed phase (the client signals start/end).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from scheduler import testing

from . import ref_backend
from .common import PartResult, Row, log, machine_cpu_seconds, percentile, proc_cpu_seconds

TARGET_THROUGHPUT = 0.9  # ours/reference, at least
TARGET_CPU = 1.25  # ours/reference server CPU per orchestration, at most
TARGET_P50 = 1.5  # ours/reference p50 latency, at most
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _driver(*args: str, stdin=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.e2e_driver", *map(str, args)], cwd=REPO,
                            stdin=stdin, stdout=subprocess.PIPE, text=True)


def _expect(proc: subprocess.Popen, tag: str, timeout_hint: str) -> None:
    line = proc.stdout.readline()
    if line.strip() != tag:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"driver sent {line!r}, expected {tag} ({timeout_hint})")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class _Cpu:
    """CPU seconds of the server (plus redis-server for ours) and of the SDK worker process."""

    def __init__(self, server_pid: int, worker_pid: int, redis_url: str | None):
        self.server_pid, self.worker_pid = server_pid, worker_pid
        self.redis = None
        if redis_url is not None:
            import redis

            self.redis = redis.Redis.from_url(redis_url)

    def snapshot(self) -> dict:
        redis_cpu = 0.0
        if self.redis is not None:
            info = self.redis.info("cpu")
            redis_cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return {"server": proc_cpu_seconds(self.server_pid), "redis": redis_cpu,
                "worker": proc_cpu_seconds(self.worker_pid), "machine": machine_cpu_seconds()[0]}

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        return {k: b[k] - a[k] for k in a}


def _phase(address: str, cpu: _Cpu, *args) -> dict:
    """Run one client phase; CPU is taken when the client is about to start and right after it is done."""
    proc = _driver(args[0], address, *args[1:])
    try:
        _expect(proc, "READY", "warm-up failed")
        s0 = cpu.snapshot()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _expect(proc, "DONE", "phase failed")
        s1 = cpu.snapshot()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
    finally:
        _stop(proc)
    out["cpu_seconds"] = _Cpu.delta(s0, s1)
    return out


def _run_side(name: str, address: str, server_pid: int, redis_url: str | None, cfg: dict) -> dict:
    worker = _driver("worker", address)
    try:
        _expect(worker, "READY", "worker did not start")
        cpu = _Cpu(server_pid, worker.pid, redis_url)
        log(f"e2e {name}: burst of {cfg['burst']} orchestrations")
        burst = _phase(address, cpu, "burst", cfg["burst"], f"{name}-burst")
        log(f"e2e {name}: {burst['count'] / burst['seconds']:.0f} orchestrations/s; steady "
            f"{cfg['rate']}/s for {cfg['seconds']}s")
        steady = _phase(address, cpu, "steady", cfg["rate"], cfg["seconds"], f"{name}-steady")
    finally:
        _stop(worker)
    return {"burst": burst, "steady": steady}


def run(quick: bool = False) -> PartResult:
    cfg = {"burst": 300 if quick else 2000, "rate": 50, "seconds": 3 if quick else 10}
    result = PartResult("e2e", details={"config": cfg})
    sides = {}
    ref_proc, ref_address = ref_backend.start()
    try:
        sides["reference"] = _run_side("reference", ref_address, ref_proc.pid, None, cfg)
    finally:
        ref_backend.stop(ref_proc)
    with testing.redis_server() as redis_url:
        server = testing.start_server(redis_url)
        try:
            sides["ours"] = _run_side("ours", server.address, server.pid, redis_url, cfg)
        finally:
            server.stop()
    result.details["sides"] = {s: {p: {k: v for k, v in d.items() if k != "latencies_ms"} for p, d in r.items()}
                               for s, r in sides.items()}
    _summarise(result, sides, cfg)
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _summarise(result: PartResult, sides: dict, cfg: dict) -> None:
    m = {}
    for s, r in sides.items():
        b, st = r["burst"], r["steady"]
        n = max(b["completed"], 1)
        lat = st["latencies_ms"]
        m[s] = {"tput": b["completed"] / b["seconds"],
                "server": b["cpu_seconds"]["server"] * 1000 / n, "redis": b["cpu_seconds"]["redis"] * 1000 / n,
                "worker": b["cpu_seconds"]["worker"] * 1000 / n, "client": b["client_cpu_seconds"] * 1000 / n,
                "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat) if lat else None,
                "steady_server": (st["cpu_seconds"]["server"] + st["cpu_seconds"]["redis"]) * 1000
                / max(st["completed"], 1)}
        m[s]["total"] = m[s]["server"] + m[s]["redis"]
        if b["completed"] != b["count"]:
            result.notes.append(f"{s}: burst completed {b['completed']} of {b['count']} ({b['statuses']})")
        if st["completed"] != st["count"]:
            result.notes.append(f"{s}: steady completed {st['completed']} of {st['count']}")
        if st["waits_queued"]:
            result.notes.append(f"{s}: {st['waits_queued']} steady waits started > 20 ms after their schedule "
                                f"(all waiter threads busy: those latencies are upper bounds)")
        if st["late_schedules"]:
            result.notes.append(f"{s}: {st['late_schedules']} steady schedules started late (client could not "
                                f"keep {cfg['rate']}/s)")
    o, r = m["ours"], m["reference"]
    t_ratio, c_ratio, p_ratio = _ratio(o["tput"], r["tput"]), _ratio(o["total"], r["server"]), _ratio(o["p50"], r["p50"])
    result.rows += [
        Row("e2e", f"burst {cfg['burst']}: orchestrations/s", o["tput"], r["tput"], t_ratio,
            f">= {TARGET_THROUGHPUT}x", t_ratio is not None and t_ratio >= TARGET_THROUGHPUT),
        Row("e2e", "burst server CPU/orchestration", o["total"], r["server"], c_ratio, f"<= {TARGET_CPU}x",
            c_ratio is not None and c_ratio <= TARGET_CPU, "ms"),
        Row("e2e", "  of which scheduler proc", o["server"], None, _ratio(o["server"], r["server"]), unit="ms"),
        Row("e2e", "  of which redis-server", o["redis"], None, _ratio(o["redis"], r["server"]), unit="ms"),
        Row("e2e", "  SDK worker proc CPU/orchestration", o["worker"], r["worker"], _ratio(o["worker"], r["worker"]),
            unit="ms"),
        Row("e2e", "  SDK client proc CPU/orchestration", o["client"], r["client"], _ratio(o["client"], r["client"]),
            unit="ms"),
        Row("e2e", f"steady {cfg['rate']}/s: latency p50", o["p50"], r["p50"], p_ratio, f"<= {TARGET_P50}x",
            p_ratio is not None and p_ratio <= TARGET_P50, "ms"),
        Row("e2e", f"steady {cfg['rate']}/s: latency p99", o["p99"], r["p99"], _ratio(o["p99"], r["p99"]), unit="ms"),
        Row("e2e", f"steady {cfg['rate']}/s: latency max", o["max"], r["max"], _ratio(o["max"], r["max"]), unit="ms"),
        Row("e2e", "steady server CPU/orchestration", o["steady_server"], r["steady_server"],
            _ratio(o["steady_server"], r["steady_server"]), unit="ms"),
    ]
    result.details["summary"] = m
    result.notes.append(
        f"one run per side on a fresh server (reference first); SDK worker (default ConcurrencyOptions) and SDK "
        f"client each in their own subprocess, sharing the {os.cpu_count()} cores with the server (and redis-server "
        f"for ours); burst: {cfg['burst']} scheduled by 16 threads, completion observed by "
        f"wait_for_orchestration_completion by 4 threads in schedule order; steady: {cfg['rate']}/s for {cfg['seconds']}s, "
        f"latency from just before the schedule call to the return of wait_for_orchestration_completion (6 waiter "
        f"threads); steady server CPU includes the servers' idle background work over the window")
