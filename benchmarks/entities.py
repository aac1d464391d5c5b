"""Durable entities and scheduled tasks with the official SDK, ours against the reference.

Both servers (the SDK's in-memory backend, ``ref_backend.py``; ours, ``dt-scheduler serve`` on a fresh
redis-server) run for the whole part, each with its own SDK worker subprocess (``entity_driver.py``: a
counter entity, an orchestration that calls it, the orchestration schedules start, and the SDK's
scheduled tasks); each round (3; quick 1) runs the same client load on the reference, then on ours, in
three phases:

* signals: 10,000 ``add`` signals (quick 2,000) from the SDK client (``signal_entity``, 16 threads)
  round-robin over 100 counters (quick 20); operations applied per second from the first signal to the
  moment every counter holds all its signals (the client reads the counters one after the other with
  ``get_entity`` once the signals are sent, again every 20 ms while one is short); server CPU (ours:
  the process + redis-server) and SDK worker CPU per operation; operations per entity batch;
* calls: orchestrations that each ``call_entity`` once (on one of 4 counters) started at 50/s for 10 s
  (quick 3 s); schedule-to-completion latency as the client sees it (``wait_for_orchestration_completion``),
  server CPU per call over the window;
* schedules: 100 schedules (quick 20) of a 1 s interval for 30 s (quick 10 s), created with the SDK's
  ``ScheduledTaskClient``, their start times spread evenly over one second and each ending half an
  interval after its last run. Each run is an orchestration whose instance id embeds its scheduled time;
  run lag = its OrchestratorStarted on its first episode (``ctx.current_utc_datetime``) - the scheduled
  time (early = lag < 0). Ours stamps that OrchestratorStarted as it hands the episode out, the reference
  when it creates the instance, so two figures compare alike: the instance's created time - the
  scheduled time, and the worker's clock as the run's first episode ran - the scheduled time. Missed =
  expected run times without a run (the SDK's entity skips the run times that passed while its
  ``run_schedule`` signal was late, so a run later than an interval costs the next one, and drops the last
  run if it is later than half an interval, past the schedule's end), duplicates = extra first episodes
  or unexpected run times;
  ``run_schedule`` signals handled beyond the expected ones (one from the create, one per run started,
  one past the end) would be delayed signals delivered early (the SDK's entity re-arms itself then instead of
  running). The lag holds the worker's own entity batch (``run_schedule`` re-arms the schedule and
  starts the run): its time (from the SDK's ``_execute_entity_batch`` to the return of its
  ``CompleteEntityTask`` call) is reported apart, and the target is on the lag less it (p99 <= 20 ms
  + the batch's p99).

The table gives medians over rounds and, for each ratio, the median of the per-round ratios (maxima and
counts over every round).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

from scheduler import testing

from . import e2e, ref_backend
from .common import PartResult, Row, log, median, percentile
from .entity_driver import CALL_ENTITIES

TARGET_THROUGHPUT = 1.0  # signals: ours/reference operations per second, at least
TARGET_LAG_P99_MS = 20  # schedules, ours: run lag p99 at most this plus the worker's batch time p99 (and 0 early)
LATE_MS = 100  # schedules: runs later than this are listed in the details (seconds after the first run, lag)
IDLE_SECONDS = 3.0  # each side's server CPU with its worker connected and no load, once per part
RUN_ID = re.compile(r"^(.*)-(\d{4}-\d\d-\d\dT[\d:.]+\+00:00)$")


def _driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.entity_driver", *map(str, args)], cwd=e2e.REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _dump(worker: subprocess.Popen) -> dict:
    """What the worker recorded since its last dump: schedule runs and entity batches."""
    worker.stdin.write("dump\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def _phase(side: dict, mode: str, *args) -> dict:
    """One client phase (as ``e2e.phase``, with this part's driver); then what the worker recorded meanwhile."""
    _dump(side["worker"])
    proc = _driver(mode, side["address"], *args)
    try:
        e2e._expect(proc, "READY", "warm-up failed")
        s0 = side["cpu"].snapshot()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        e2e._expect(proc, "DONE", "phase failed")
        s1 = side["cpu"].snapshot()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
    finally:
        e2e._stop(proc)
    out["cpu_seconds"] = e2e._Cpu.delta(s0, s1)
    out["worker"] = _dump(side["worker"])
    return out


@contextlib.contextmanager
def _worker_side(name: str, address: str, server_pid: int, redis_url: str | None) -> Iterator[dict]:
    worker = _driver("worker", address)
    try:
        e2e._expect(worker, "READY", "worker did not start")
        yield {"name": name, "address": address, "worker": worker,
               "cpu": e2e._Cpu(server_pid, worker.pid, redis_url)}
    finally:
        e2e._stop(worker)


@contextlib.contextmanager
def _both_servers() -> Iterator[list[dict]]:
    """As ``e2e.both_servers``, with this part's worker: [reference, ours]."""
    ref_proc, ref_address = ref_backend.start()
    try:
        with testing.redis_server() as redis_url:
            server = testing.start_server(redis_url)
            try:
                with _worker_side("reference", ref_address, ref_proc.pid, None) as ref, \
                        _worker_side("ours", server.address, server.pid, redis_url) as ours:
                    yield [ref, ours]
            finally:
                server.stop()
    finally:
        ref_backend.stop(ref_proc)


def run(quick: bool = False, rounds: int | None = None) -> PartResult:
    cfg = {"signals": {"count": 2000, "entities": 20} if quick else {"count": 10000, "entities": 100},
           "calls": {"rate": 50, "seconds": 3 if quick else 10, "entities": CALL_ENTITIES},
           "schedules": {"count": 20, "interval": 1.0, "seconds": 10} if quick else
           {"count": 100, "interval": 1.0, "seconds": 30},
           "rounds": rounds or (1 if quick else 3)}
    result = PartResult("entities", details={"config": cfg})
    runs: list[dict[str, dict]] = []
    with _both_servers() as sides:
        result.details["idle_cores"] = idle = {side["name"]: _idle(side) for side in sides}
        for k in range(cfg["rounds"]):
            runs.append({})
            for side in sides:
                name, sg, ca, sc = side["name"], cfg["signals"], cfg["calls"], cfg["schedules"]
                log(f"entities round {k + 1}/{cfg['rounds']} {name}: {sg['count']} signals over {sg['entities']} "
                    f"entities, calls at {ca['rate']}/s for {ca['seconds']}s, {sc['count']} schedules every "
                    f"{sc['interval']:g}s for {sc['seconds']}s")
                runs[-1][name] = {
                    "signals": _phase(side, "signals", sg["count"], sg["entities"], f"{name}-sig-{k}"),
                    "calls": _phase(side, "calls", ca["rate"], ca["seconds"], f"{name}-call-{k}"),
                    "schedules": _phase(side, "schedules", sc["count"], sc["interval"], sc["seconds"],
                                        f"{name}-sched-{k}")}
    per_round = [{s: _figures(s, k, r, idle[s], result.notes) for s, r in run_.items()} for k, run_ in enumerate(runs)]
    result.details["per_round"] = per_round
    _summarise(result, per_round, cfg)
    return result


def _idle(side: dict) -> float:
    """Cores the server (ours: + redis-server) keeps busy with its worker connected and nothing to do."""
    s0 = side["cpu"].snapshot()
    time.sleep(IDLE_SECONDS)
    d = e2e._Cpu.delta(s0, side["cpu"].snapshot())
    return (d["server"] + d["redis"]) / IDLE_SECONDS


def _other_load(d: dict, seconds: float) -> float:
    cpu = d["cpu_seconds"]
    return max(cpu["machine"] - cpu["server"] - cpu["redis"] - cpu["worker"] - d.get("client_cpu_seconds", 0), 0.0) \
        / seconds


def _signals(d: dict) -> dict:
    cpu, n = d["cpu_seconds"], max(d["count"], 1)
    batches = [b for b in d["worker"]["batches"] if not b[0].endswith("-warm")]
    ops = sum(b[2] for b in batches)
    return {"tput": d["applied"] / d["seconds"], "signal_rate": d["count"] / d["signal_seconds"],
            "drain": d["seconds"] - d["signal_seconds"], "server": cpu["server"] * 1000 / n,
            "redis": cpu["redis"] * 1000 / n, "total": (cpu["server"] + cpu["redis"]) * 1000 / n,
            "worker": cpu["worker"] * 1000 / n, "client": d["client_cpu_seconds"] * 1000 / n,
            "commands": cpu["redis_commands"] / n, "scripts": cpu["redis_scripts"] / n,
            "batch_ops": ops / len(batches) if batches else None, "batches": len(batches),
            "reads": d["reads"], "other_load": _other_load(d, d["seconds"])}


def _calls(d: dict) -> dict:
    lat, cpu, n = d["latencies_ms"], d["cpu_seconds"], max(d["completed"], 1)
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat, default=None),
            "total": (cpu["server"] + cpu["redis"]) * 1000 / n, "worker": cpu["worker"] * 1000 / n,
            "other_load": _other_load(d, d["seconds"])}


def _schedules(d: dict, prefix: str, idle: float) -> dict:
    """Run lags and counts of one round from the expected runs, the instances and the worker's records."""
    expected = {iid: (sid, ms, status, created) for sid, ms, iid, status, created in d["instances"]}
    first: dict[str, float] = {}
    seen: dict[str, float] = {}
    duplicates = unexpected = 0
    for iid, started, wall in d["worker"]["runs"]:
        m = RUN_ID.match(iid)
        if m is None or not m.group(1).startswith(prefix + "-s"):
            continue  # the warm-up schedule's run
        if iid not in expected:
            unexpected += 1
        elif iid in first:
            duplicates += 1
        else:
            first[iid], seen[iid] = started, wall
    lags = [first[iid] - ms for iid, (_sid, ms, _st, _cr) in expected.items() if iid in first]
    seen_lags = [seen[iid] - ms for iid, (_sid, ms, _st, _cr) in expected.items() if iid in seen]
    created = [cr - ms for _sid, ms, _st, cr in expected.values() if cr is not None]
    batches = [b for b in d["worker"]["batches"] if b[1] == "run_schedule" and b[0].startswith(f"@schedule@{prefix}-s")]
    episodes = [b[3] + b[4] for b in batches]
    arms = sum(b[2] for b in batches)  # run_schedule operations: one from the create, one per run, one past the end
    late = sorted([round((ms - d["first_ms"]) / 1000, 2), round(first[iid] - ms)]
                  for iid, (_sid, ms, _st, _cr) in expected.items() if iid in first and first[iid] - ms > LATE_MS)
    n = max(len(expected), 1)
    cpu = d["cpu_seconds"]
    return {"expected": len(expected), "ran": len(first), "early": sum(1 for x in lags if x < 0),
            "missed": sum(1 for iid in expected if iid not in first),
            "not_completed": sum(1 for v in expected.values() if v[2] != "COMPLETED"),
            "duplicates": duplicates + unexpected, "lag_p50": percentile(lags, 50), "lag_p99": percentile(lags, 99),
            "lag_max": max(lags, default=None), "created_p50": percentile(created, 50),
            "created_p99": percentile(created, 99), "seen_p50": percentile(seen_lags, 50),
            "seen_p99": percentile(seen_lags, 99), "extra_arms": arms - 2 * d["count"] - len(first),
            "late_runs": late, "missed_at": sorted(round((ms - d["first_ms"]) / 1000, 2)
                                                   for iid, (_s, ms, _st, _c) in expected.items() if iid not in first),
            "ep_p50": percentile(episodes, 50), "ep_p99": percentile(episodes, 99),
            "ep_max": max(episodes, default=None), "ep_call_p50": percentile([b[4] for b in batches], 50),
            "total": (cpu["server"] + cpu["redis"]) * 1000 / n,
            "less_idle": (cpu["server"] + cpu["redis"] - idle * d["window_seconds"]) * 1000 / n,
            "worker": cpu["worker"] * 1000 / n, "create_seconds": d["create_seconds"],
            "created_margin_ms": d["created_margin_ms"], "other_load": _other_load(d, d["window_seconds"])}


def _figures(side: str, k: int, r: dict, idle: float, notes: list[str]) -> dict:
    sig, calls, sched = r["signals"], r["calls"], r["schedules"]
    if sig["applied"] != sig["count"] or sig["over"]:
        notes.append(f"{side} round {k + 1}: signals applied {sig['applied']} of {sig['count']}, {sig['over']} "
                     f"more than sent, {sig['short']} counters short")
    if calls["completed"] != calls["count"]:
        notes.append(f"{side} round {k + 1}: calls completed {calls['completed']} of {calls['count']}")
    for key, what in (("late_schedules", "call orchestrations started late"),
                      ("waits_queued", "call waits started > 20 ms after their schedule (upper bounds)")):
        if calls[key]:
            notes.append(f"{side} round {k + 1}: {calls[key]} {what}")
    s = _schedules(sched, f"{side}-sched-{k}", idle)
    if s["created_margin_ms"] < 0:
        notes.append(f"{side} round {k + 1}: schedules created {-s['created_margin_ms']:.0f} ms after the first run "
                     f"time (the first runs are late)")
    if s["late_runs"] or s["missed_at"]:
        when = [t for t, _ in s["late_runs"]] + s["missed_at"]
        notes.append(f"{side} round {k + 1}: {len(s['late_runs'])} runs later than {LATE_MS} ms and {s['missed']} "
                     f"missed, from {min(when):.1f}s to {max(when):.1f}s into the window (details: late_runs, "
                     f"missed_at)")
    if s["not_completed"] > s["missed"]:
        notes.append(f"{side} round {k + 1}: {s['not_completed']} expected runs not COMPLETED")
    return {"signals": _signals(sig), "calls": _calls(calls), "schedules": s}


def _summarise(result: PartResult, per_round: list[dict], cfg: dict) -> None:
    sg, ca, sc, rounds = cfg["signals"], cfg["calls"], cfg["schedules"], cfg["rounds"]

    def med(side: str, phase: str, key: str) -> float | None:
        return median([f[side][phase][key] for f in per_round if f[side][phase][key] is not None])

    def mratio(phase: str, key: str) -> float | None:
        return median([x for f in per_round if (x := e2e.ratio(f["ours"][phase][key], f["reference"][phase][key]))])

    def total(side: str, key: str) -> int:
        return sum(f[side]["schedules"][key] for f in per_round)

    def worst(side: str, key: str) -> float | None:
        return max((f[side]["schedules"][key] for f in per_round if f[side]["schedules"][key] is not None),
                   default=None)

    def row(phase: str, metric: str, key: str, unit: str = "", target: str = "", ok: bool | None = None) -> Row:
        return Row("entities", metric, med("ours", phase, key), med("reference", phase, key), mratio(phase, key),
                   target, ok, unit)

    t_ratio = mratio("signals", "tput")
    label = f"signals {sg['count']}/{sg['entities']}"
    result.rows += [
        Row("entities", f"{label}: operations/s", med("ours", "signals", "tput"), med("reference", "signals", "tput"),
            t_ratio, f">= {TARGET_THROUGHPUT}x", t_ratio is not None and t_ratio >= TARGET_THROUGHPUT),
        row("signals", "  signal calls/s (client)", "signal_rate"),
        row("signals", "  drain after the last signal", "drain", "s"),
        row("signals", f"{label}: server CPU/operation", "total", "ms"),
        Row("entities", "  of which scheduler proc", med("ours", "signals", "server"), None,
            median([x for f in per_round if (x := e2e.ratio(f["ours"]["signals"]["server"],
                                                             f["reference"]["signals"]["total"]))]), unit="ms"),
        Row("entities", "  of which redis-server", med("ours", "signals", "redis"), None,
            median([x for f in per_round if (x := e2e.ratio(f["ours"]["signals"]["redis"],
                                                             f["reference"]["signals"]["total"]))]), unit="ms"),
        Row("entities", "  Redis commands/operation", med("ours", "signals", "commands")),
        Row("entities", "    of which scripts", med("ours", "signals", "scripts")),
        row("signals", "  SDK worker proc CPU/operation", "worker", "ms"),
        row("signals", "  SDK client proc CPU/operation", "client", "ms"),
        row("signals", "  operations per entity batch", "batch_ops"),
        row("calls", f"calls {ca['rate']}/s: latency p50", "p50", "ms"),
        row("calls", f"calls {ca['rate']}/s: latency p99", "p99", "ms"),
        row("calls", f"calls {ca['rate']}/s: latency max", "max", "ms"),
        row("calls", "  server CPU/call over the window", "total", "ms"),
        row("calls", "  SDK worker proc CPU/call", "worker", "ms"),
    ]
    o_exp, o_ran, o_early = total("ours", "expected"), total("ours", "ran"), total("ours", "early")
    lag_p99, ep_p99 = med("ours", "schedules", "lag_p99"), med("ours", "schedules", "ep_p99")
    lag_target_ok = None if lag_p99 is None or ep_p99 is None else lag_p99 <= TARGET_LAG_P99_MS + ep_p99
    label = f"schedules {sc['count']} x {sc['interval']:g}s"
    result.rows += [
        Row("entities", f"{label} x{rounds}: runs", o_ran, total("reference", "ran"), target=str(o_exp),
            ok=o_ran == o_exp),
        Row("entities", f"{label}: missed runs", total("ours", "missed"), total("reference", "missed"), target="0",
            ok=total("ours", "missed") == 0),
        Row("entities", f"{label}: duplicate runs", total("ours", "duplicates"), total("reference", "duplicates"),
            target="0", ok=total("ours", "duplicates") == 0),
        Row("entities", f"{label}: early (lag < 0)", o_early, total("reference", "early"), target="0", ok=o_early == 0),
        row("schedules", f"{label}: run lag p50", "lag_p50", "ms"),
        Row("entities", f"{label}: run lag p99", lag_p99, med("reference", "schedules", "lag_p99"),
            mratio("schedules", "lag_p99"), f"<= {TARGET_LAG_P99_MS} ms + batch p99", lag_target_ok, "ms"),
        Row("entities", f"{label}: run lag max", worst("ours", "lag_max"), worst("reference", "lag_max"),
            e2e.ratio(worst("ours", "lag_max"), worst("reference", "lag_max")), unit="ms"),
        row("schedules", "  created - scheduled p50", "created_p50", "ms"),
        row("schedules", "  created - scheduled p99", "created_p99", "ms"),
        row("schedules", "  run seen by the worker - scheduled p50", "seen_p50", "ms"),
        row("schedules", "  run seen by the worker - scheduled p99", "seen_p99", "ms"),
        Row("entities", "  run_schedule signals past expected", total("ours", "extra_arms"),
            total("reference", "extra_arms"), target="0", ok=total("ours", "extra_arms") == 0),
        row("schedules", "  worker run_schedule batch p50", "ep_p50", "ms"),
        row("schedules", "  worker run_schedule batch p99", "ep_p99", "ms"),
        row("schedules", "    of which CompleteEntityTask p50", "ep_call_p50", "ms"),
        row("schedules", "  server CPU/run over the window", "total", "ms"),
        row("schedules", "    less the idle server CPU", "less_idle", "ms"),
        row("schedules", "  SDK worker proc CPU/run", "worker", "ms"),
        row("schedules", f"  creating {sc['count']} schedules", "create_seconds", "s"),
    ]
    idle = result.details["idle_cores"]
    result.rows.append(Row("entities", "server CPU idle, worker connected (cores)", idle["ours"], idle["reference"]))
    for phase, key, label_ in (("signals", "tput", "signals throughput"), ("signals", "total", "signals server CPU"),
                               ("calls", "p50", "calls p50"), ("schedules", "lag_p99", "schedule lag p99")):
        ratios = [e2e.ratio(f["ours"][phase][key], f["reference"][phase][key]) for f in per_round]
        result.notes.append(f"per-round {label_} ratios: " + ", ".join(f"{x:.2f}x" for x in ratios if x))
    for side in ("reference", "ours"):
        f = per_round
        result.notes.append(
            f"{side} per round: signals ops/s " + ", ".join(f"{x[side]['signals']['tput']:.0f}" for x in f)
            + "; calls p50 " + ", ".join(f"{x[side]['calls']['p50'] or 0:.1f}" for x in f)
            + " ms; schedule lag p99 " + ", ".join(f"{x[side]['schedules']['lag_p99'] or 0:.1f}" for x in f)
            + " ms; other load (signals/calls/schedules, cores) "
            + ", ".join("/".join(f"{x[side][p]['other_load']:.2f}" for p in ("signals", "calls", "schedules"))
                        for x in f))
    result.notes.append(
        f"{rounds} round(s), each the reference then ours, both servers and their SDK workers (default "
        f"ConcurrencyOptions) running throughout on the {os.cpu_count()} cores; table: medians of per-round figures, "
        f"ratios the median of per-round ratios, maxima and counts over every round; server CPU: ours = "
        f"dt-scheduler process + redis-server; signals: {sg['count']} signal_entity calls by 16 threads round-robin "
        f"over {sg['entities']} counters, then each counter read until it holds its signals; calls: {ca['rate']}/s for "
        f"{ca['seconds']}s over {ca['entities']} counters, latency from just before the schedule call to the return "
        f"of wait_for_orchestration_completion (6 waiter threads); schedules: start times spread over one interval, "
        f"lag = OrchestratorStarted of the run's first episode - its scheduled time, CPU from just before the first "
        f"run to 2 s after the last, idle background included")
