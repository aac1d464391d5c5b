"""Helpers shared by the benchmark parts: CPU readings, percentiles, result rows, the event loop."""
from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2:].split()  # the command name may hold spaces
    # After "pid (comm) ": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_syscalls(pid: int) -> int:
    """Read + write system calls so far of a whole process (/proc/<pid>/io: syscr + syscw)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        fields = dict(line.split(": ", 1) for line in f.read().splitlines())
    return int(fields["syscr"]) + int(fields["syscw"])


def proc_context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches so far, summed over every thread of the process."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                total += sum(int(line.split()[1]) for line in f
                             if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine, every core, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def self_cpu_seconds() -> float:
    """CPU of this (benchmark/client) process, every thread."""
    return time.process_time()


def redis_client(url: str):
    """An asyncio Redis client that survives idle periods (the test redis-server drops clients idle for 30 s)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 2))


def connect_redis(url: str, cluster: bool = False):
    """:func:`redis_client`, or on a Redis Cluster the client a replica uses (``--redis-cluster``)."""
    if not cluster:
        return redis_client(url)
    from scheduler.store.connection import connect

    return connect(url, cluster=True, max_connections=64)


async def redis_cpu_seconds(redis) -> float:
    """used_cpu_sys + used_cpu_user of the redis-server (its own rusage, every thread)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")
UNCOUNTED_COMMANDS = ("info", "ping")  # the benchmark's own readings


def calls_by_command(commandstats: dict) -> dict[str, int]:
    """Calls so far by command name from an ``INFO commandstats`` reply (the benchmark's own left out)."""
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in commandstats.items()
            if name.removeprefix("cmdstat_") not in UNCOUNTED_COMMANDS}


def command_counts(commandstats: dict) -> tuple[int, int]:
    """(commands, of which scripts) so far from an ``INFO commandstats`` reply, the benchmark's own
    INFO and PING left out: divided by the operations of a window, Redis calls per operation."""
    commands = scripts = 0
    for name, stat in commandstats.items():
        cmd = name.removeprefix("cmdstat_")
        if cmd in UNCOUNTED_COMMANDS:
            continue
        commands += int(stat["calls"])
        if cmd in SCRIPT_COMMANDS:
            scripts += int(stat["calls"])
    return commands, scripts


async def redis_time_ms(redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on uvloop when it is installed (as ``dt-scheduler serve`` does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Row:
    """One line of the summary table."""

    part: str
    metric: str
    ours: float | None
    reference: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    unit: str = ""


@dataclass
class PartResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "details": self.details, "notes": self.notes}


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if abs(value) >= 1000 or value == int(value):
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".rstrip()


def summary_table(parts: Sequence[PartResult]) -> str:
    header = ("part", "metric", "ours", "reference", "ratio", "target", "ok")
    lines = [header]
    for part in parts:
        for r in part.rows:
            ok = "-" if r.ok is None else ("yes" if r.ok else "NO")
            lines.append((r.part, r.metric, _fmt(r.ours, r.unit), _fmt(r.reference, r.unit),
                          "-" if r.ratio is None else f"{r.ratio:.2f}x", r.target or "-", ok))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for part in parts:
        for note in part.notes:
            out.append(f"note [{part.name}]: {note}")
    return "\n".join(out)
