"""End to end with the official SDK: TaskHubGrpcWorker runs a one-activity orchestration, ours against the reference.

The orchestration is ``orch(ctx, x): r = yield ctx.call_activity(act, input=x); return r``.
Both servers (the SDK's in-memory backend, ``ref_backend.py``; ours, ``dt-scheduler serve`` on
a fresh redis-server) run for the whole part, each with its own SDK worker; each round (3; quick 1)
runs the same load on the reference, then on ours, in two phases:

* burst: N orchestrations scheduled at once by the SDK client (16 threads), then waited for with
  ``wait_for_orchestration_completion`` by 4 threads walking the ids in schedule order (the reference
  serves on 10 threads and a wait holds one, so more waiters would starve the worker); orchestrations/s from the first schedule
  to the last completion, server CPU per orchestration (server process from /proc, plus the
  redis-server's INFO cpu for ours) and the SDK worker process's CPU per orchestration;
* steady: orchestrations scheduled at a fixed rate; schedule-to-completion latency as the client
  observes it (``wait_for_orchestration_completion`` on a pool of 6 threads, one per instance in flight),
  server CPU per orchestration over the window, and the SDK worker's CPU per orchestration at the same
  pace on both sides (in the burst each worker runs at its server's pace, and a slower pace costs the
  worker more per orchestration: fewer items per wake-up of its threads).

The SDK worker and the SDK client run in subprocesses (``benchmarks/e2e_driver.py``; the SDK's
generated proto clashes with ours in one process): one worker process per side and one client
process per phase. CPU is read by this process around the timed phase (the client signals
start/end). The table gives medians over rounds and, for each ratio, the median of the per-round
ratios: the machine is shared, and one disturbed round must not decide.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

from scheduler import testing

from . import ref_backend
from .common import PartResult, Row, calls_by_command, command_counts, log, machine_cpu_seconds, median, percentile, proc_cpu_seconds

# issue 11's targets, ours/reference
TARGET_THROUGHPUT = 1.0  # burst orchestrations/s, at least
TARGET_CPU = 1.25  # server CPU per orchestration (burst and steady), at most
TARGET_WORKER_CPU = 1.05  # the SDK worker's CPU per orchestration in the burst, at most
TARGET_P50 = 1.2  # steady p50 latency, at most
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
        redis_cpu, commands, scripts, by_command = 0.0, 0, 0, {}
        if self.redis is not None:
            info = self.redis.info("cpu")
            redis_cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            stats = self.redis.info("commandstats")
            commands, scripts = command_counts(stats)
            by_command = calls_by_command(stats)
        return {"server": proc_cpu_seconds(self.server_pid), "redis": redis_cpu,
                "redis_commands": commands, "redis_scripts": scripts, "redis_by_command": by_command,
                "worker": proc_cpu_seconds(self.worker_pid), "machine": machine_cpu_seconds()[0]}

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        return {k: {c: n - a[k].get(c, 0) for c, n in b[k].items() if n != a[k].get(c, 0)}
                if isinstance(a[k], dict) else b[k] - a[k] for k in a}


def phase(address: str, cpu: _Cpu, *args) -> dict:
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


@contextlib.contextmanager
def worker_side(name: str, address: str, server_pid: int, redis_url: str | None) -> Iterator[dict]:
    """An SDK worker subprocess connected to one server, for the whole run."""
    worker = _driver("worker", address)
    try:
        _expect(worker, "READY", "worker did not start")
        yield {"name": name, "address": address, "cpu": _Cpu(server_pid, worker.pid, redis_url)}
    finally:
        _stop(worker)


@contextlib.contextmanager
def both_servers() -> Iterator[list[dict]]:
    """The reference (the SDK's in-memory backend) and ours (``dt-scheduler serve`` on a fresh
    redis-server), each with its SDK worker, running for the whole part: [reference, ours]."""
    ref_proc, ref_address = ref_backend.start()
    try:
        with testing.redis_server() as redis_url:
            server = testing.start_server(redis_url)
            try:
                with worker_side("reference", ref_address, ref_proc.pid, None) as ref, \
                        worker_side("ours", server.address, server.pid, redis_url) as ours:
                    yield [ref, ours]
            finally:
                server.stop()
    finally:
        ref_backend.stop(ref_proc)


def _round(side: dict, k: int, cfg: dict) -> dict:
    name, address, cpu = side["name"], side["address"], side["cpu"]
    log(f"e2e round {k + 1}/{cfg['rounds']} {name}: burst of {cfg['burst']}, then {cfg['rate']}/s for "
        f"{cfg['seconds']}s")
    burst = phase(address, cpu, "burst", cfg["burst"], f"{name}-burst-{k}")
    steady = phase(address, cpu, "steady", cfg["rate"], cfg["seconds"], f"{name}-steady-{k}")
    return {"burst": burst, "steady": steady}


def run(quick: bool = False, rounds: int | None = None) -> PartResult:
    cfg = {"burst": 300 if quick else 2000, "rate": 50, "seconds": 3 if quick else 10,
           "rounds": rounds or (1 if quick else 3)}
    result = PartResult("e2e", details={"config": cfg})
    runs: list[dict[str, dict]] = []
    with both_servers() as sides:
        for k in range(cfg["rounds"]):
            runs.append({side["name"]: _round(side, k, cfg) for side in sides})
    result.details["rounds"] = [{s: {p: {k: v for k, v in d.items() if k != "latencies_ms"} for p, d in r.items()}
                                 for s, r in run_.items()} for run_ in runs]
    _summarise(result, runs, cfg)
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    return None if a is None or not b else a / b


def _figures(side: str, r: dict, cfg: dict, notes: list[str]) -> dict:
    """One side's figures of one round (per orchestration, ms)."""
    b, st = r["burst"], r["steady"]
    n = max(b["completed"], 1)
    lat = st["latencies_ms"]
    m = {"tput": b["completed"] / b["seconds"],
         "server": b["cpu_seconds"]["server"] * 1000 / n, "redis": b["cpu_seconds"]["redis"] * 1000 / n,
         "worker": b["cpu_seconds"]["worker"] * 1000 / n, "client": b["client_cpu_seconds"] * 1000 / n,
         "commands": b["cpu_seconds"]["redis_commands"] / n, "scripts": b["cpu_seconds"]["redis_scripts"] / n,
         "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat) if lat else None,
         "steady_server": (st["cpu_seconds"]["server"] + st["cpu_seconds"]["redis"]) * 1000 / max(st["completed"], 1),
         "steady_worker": st["cpu_seconds"]["worker"] * 1000 / max(st["completed"], 1),
         "other_load": (b["cpu_seconds"]["machine"] - b["cpu_seconds"]["server"] - b["cpu_seconds"]["redis"]
                        - b["cpu_seconds"]["worker"] - b["client_cpu_seconds"]) / b["seconds"]}
    m["total"] = m["server"] + m["redis"]
    if b["completed"] != b["count"]:
        notes.append(f"{side}: burst completed {b['completed']} of {b['count']} ({b['statuses']})")
    if st["completed"] != st["count"]:
        notes.append(f"{side}: steady completed {st['completed']} of {st['count']}")
    if st["waits_queued"]:
        notes.append(f"{side}: {st['waits_queued']} steady waits started > 20 ms after their schedule "
                     f"(all waiter threads busy: those latencies are upper bounds)")
    if st["late_schedules"]:
        notes.append(f"{side}: {st['late_schedules']} steady schedules started late (client could not "
                     f"keep {cfg['rate']}/s)")
    return m


def _summarise(result: PartResult, runs: list[dict], cfg: dict) -> None:
    """Rows of medians over rounds; each ratio is the median of the per-round ratios (ours and the
    reference measured back to back), so one disturbed round does not decide."""
    per_round = [{s: _figures(s, r, cfg, result.notes) for s, r in run_.items()} for run_ in runs]

    def med(side: str, key: str) -> float | None:
        return median([f[side][key] for f in per_round if f[side][key] is not None])

    def median_ratio(key: str, ref_key: str | None = None) -> float | None:
        return median([x for f in per_round if (x := ratio(f["ours"][key], f["reference"][ref_key or key]))])

    t_ratio, c_ratio, p_ratio = median_ratio("tput"), median_ratio("total", "server"), median_ratio("p50")
    w_ratio, sc_ratio = median_ratio("worker"), median_ratio("steady_server")
    result.rows += [
        Row("e2e", f"burst {cfg['burst']}: orchestrations/s", med("ours", "tput"), med("reference", "tput"), t_ratio,
            f">= {TARGET_THROUGHPUT}x", t_ratio is not None and t_ratio >= TARGET_THROUGHPUT),
        Row("e2e", "burst server CPU/orchestration", med("ours", "total"), med("reference", "server"), c_ratio,
            f"<= {TARGET_CPU}x", c_ratio is not None and c_ratio <= TARGET_CPU, "ms"),
        Row("e2e", "  of which scheduler proc", med("ours", "server"), None, median_ratio("server"), unit="ms"),
        Row("e2e", "  of which redis-server", med("ours", "redis"), None, median_ratio("redis", "server"), unit="ms"),
        Row("e2e", "  Redis commands/orchestration", med("ours", "commands")),
        Row("e2e", "    of which scripts", med("ours", "scripts")),
        Row("e2e", "  SDK worker proc CPU/orchestration", med("ours", "worker"), med("reference", "worker"),
            w_ratio, f"<= {TARGET_WORKER_CPU}x", w_ratio is not None and w_ratio <= TARGET_WORKER_CPU, "ms"),
        Row("e2e", "  SDK client proc CPU/orchestration", med("ours", "client"), med("reference", "client"),
            median_ratio("client"), unit="ms"),
        Row("e2e", f"steady {cfg['rate']}/s: latency p50", med("ours", "p50"), med("reference", "p50"), p_ratio,
            f"<= {TARGET_P50}x", p_ratio is not None and p_ratio <= TARGET_P50, "ms"),
        Row("e2e", f"steady {cfg['rate']}/s: latency p99", med("ours", "p99"), med("reference", "p99"), median_ratio("p99"),
            unit="ms"),
        Row("e2e", f"steady {cfg['rate']}/s: latency max", med("ours", "max"), med("reference", "max"), median_ratio("max"),
            unit="ms"),
        Row("e2e", "steady server CPU/orchestration", med("ours", "steady_server"), med("reference", "steady_server"),
            sc_ratio, f"<= {TARGET_CPU}x", sc_ratio is not None and sc_ratio <= TARGET_CPU, "ms"),
        Row("e2e", "  steady SDK worker CPU/orchestration", med("ours", "steady_worker"),
            med("reference", "steady_worker"), median_ratio("steady_worker"), unit="ms"),
    ]
    result.details["per_round"] = per_round
    for key, label in (("tput", "throughput"), ("total", "server CPU"), ("p50", "steady p50")):
        ref_key = "server" if key == "total" else key
        ratios = [ratio(f["ours"][key], f["reference"][ref_key]) for f in per_round]
        result.notes.append(f"per-round {label} ratios: " + ", ".join(f"{x:.2f}x" for x in ratios if x))
    result.notes.append("other load during the bursts (cores, reference/ours per round): " + ", ".join(
        f"{f['reference']['other_load']:.2f}/{f['ours']['other_load']:.2f}" for f in per_round))
    result.notes.append(
        f"{cfg['rounds']} round(s), each the reference then ours, both servers and their SDK workers running "
        f"throughout; table: medians of per-round figures, ratios the median of per-round ratios; SDK worker "
        f"(default ConcurrencyOptions) and SDK client each in their own subprocess, sharing the {os.cpu_count()} "
        f"cores with the server (and redis-server for ours); burst: {cfg['burst']} scheduled by 16 threads, "
        f"completion observed by wait_for_orchestration_completion by 4 threads in schedule order; steady: "
        f"{cfg['rate']}/s for {cfg['seconds']}s, latency from just before the schedule call to the return of "
        f"wait_for_orchestration_completion (6 waiter threads); steady server CPU includes the servers' idle "
        f"background work over the window")
