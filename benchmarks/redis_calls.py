"""What Redis does per operation: ``python -m benchmarks.redis_calls [--count N]``.

For a one-activity orchestration (the e2e burst), a StartInstance (immediate start, no worker connected),
a durable timer (its promotion and the episode it wakes, the timers phase of ``e2e_driver``) and an entity
signal (``entity_driver``'s signals phase), each on a fresh redis-server and replica with the official SDK
worker: the Redis calls the replica sends (round trips' commands: scripts and plain commands), the commands
the scripts run inside, and redis-server's CPU, per operation. Deterministic counts (INFO commandstats
and a MONITOR of the window, whose lines tell a client's command from a script's), so they compare across
runs on a shared machine; the CPU figure is the pass without MONITOR.

Also the ceiling these imply: operations per second per Redis core (1 / redis-server CPU per operation)
and, since every instance's keys share one slot, per Cluster master.
"""
from __future__ import annotations

import argparse
import hashlib
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

import redis as redis_sync

from scheduler import testing
from scheduler.store import Store
from scheduler.store.scripts import source

from . import e2e, entities
from .common import log

SCRIPT_NAMES = {hashlib.sha1(source(name).encode()).hexdigest(): name for name in Store.SCRIPTS}
UNCOUNTED = ("info",)  # this tool's own readings


def _redis_time(r) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


@contextlib.contextmanager
def _monitor(port: int):
    """MONITOR of the redis-server into a file; yields a function that counts its lines between two Redis
    times: (client commands by name, script commands by name)."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    with tempfile.TemporaryFile("w+") as f:
        proc = subprocess.Popen([cli, "-p", str(port), "monitor"], stdout=f, text=True)
        time.sleep(0.3)

        def count(t0: float, t1: float) -> tuple[Counter, Counter]:
            f.flush()
            f.seek(0)
            outside, inside = Counter(), Counter()
            for line in f:
                parts = line.split(" ", 3)
                if len(parts) < 4 or not parts[0][:1].isdigit():
                    continue
                if not t0 <= float(parts[0]) <= t1:
                    continue
                words = parts[3].split('"')
                name = words[1].lower() if len(words) > 1 else "?"
                if name == "evalsha" and len(words) > 3:
                    name = f"evalsha {SCRIPT_NAMES.get(words[3], words[3][:8])}"
                (inside if parts[2] == "lua]" else outside)[name] += 1
            return outside, inside

        try:
            yield count
        finally:
            proc.terminate()
            proc.wait(10)


def _measure(name: str, count: int, phase) -> dict:
    """Two passes of ``phase(address, cpu)`` on one replica: without MONITOR (CPU, commandstats) and with it."""
    with testing.redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        server = testing.start_server(url)
        try:
            r = redis_sync.Redis.from_url(url)
            plain = phase(server, url, f"{name}-a")
            with _monitor(port) as count_lines:
                watched = phase(server, url, f"{name}-b")
                cpu = watched["cpu_seconds"]
                outside, inside = count_lines(cpu["start_time"], cpu["end_time"])
            r.close()
        finally:
            server.stop()
    c = plain["cpu_seconds"]
    return {"operation": name, "count": count,
            "redis_cpu_ms": c["redis"] * 1000 / count, "server_cpu_ms": c["server"] * 1000 / count,
            "commands_total": c["redis_commands"] / count, "scripts": c["redis_scripts"] / count,
            "calls_sent": sum(n for k, n in outside.items() if k not in UNCOUNTED) / count,
            "scripts_sent": sum(n for k, n in outside.items() if k.startswith("evalsha")) / count,
            "commands_in_scripts": sum(inside.values()) / count,
            "sent_by_command": {k: round(n / count, 3) for k, n in outside.most_common()},
            "in_scripts_by_command": {k: round(n / count, 3) for k, n in inside.most_common()},
            "seconds": plain.get("seconds")}


def _timed_phase(cpu, run) -> dict:
    """``run()`` (a phase that snapshots ``cpu`` at the start and the end of its window), with the Redis
    times of those two snapshots in its ``cpu_seconds`` (``start_time``, ``end_time``)."""
    times = []
    original = cpu.snapshot

    def snapshot() -> dict:
        times.append(_redis_time(cpu.redis))
        return original()
    cpu.snapshot = snapshot
    out = run()
    out["cpu_seconds"]["start_time"], out["cpu_seconds"]["end_time"] = times[-2], times[-1]
    return out


def _run_e2e_phase(mode: str, *args):
    def phase(server, url, tag):
        with e2e.worker_side("ours", server.address, server.pid, url) as side:
            return _timed_phase(side["cpu"], lambda: e2e.phase(server.address, side["cpu"], mode, *args, tag))
    return phase


def _run_signals(count: int, entity_count: int):
    def phase(server, url, tag):
        with entities._worker_side("ours", server.address, server.pid, url) as side:
            return _timed_phase(side["cpu"], lambda: entities._phase(side, "signals", count, entity_count, tag))
    return phase


def _run_starts(count: int):
    """StartInstance ``count`` times (immediate start; no worker is connected, so nothing else runs)."""
    import grpc

    from scheduler._proto import orchestrator_service_pb2 as pb
    from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

    def phase(server, url, tag):
        cpu = e2e._Cpu(server.pid, server.pid, url)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            for i in range(20):  # warm-up
                stub.StartInstance(pb.CreateInstanceRequest(instanceId=f"{tag}-w{i}", name="orch"))
            t0, s0 = _redis_time(cpu.redis), cpu.snapshot()
            for i in range(count):
                stub.StartInstance(pb.CreateInstanceRequest(instanceId=f"{tag}-{i}", name="orch"))
            s1 = cpu.snapshot()
            t1 = _redis_time(cpu.redis)
        out = {"cpu_seconds": e2e._Cpu.delta(s0, s1)}
        out["cpu_seconds"]["start_time"], out["cpu_seconds"]["end_time"] = t0, t1
        return out
    return phase


def run(count: int, only: tuple[str, ...] | None = None) -> list[dict]:
    plans = [("orchestration", count, _run_e2e_phase("burst", count)),
             ("StartInstance", count, _run_starts(count)),
             ("timer", count, _run_e2e_phase("timers", count, 1.0, 10.0 + count / 50)),
             ("entity signal", count, _run_signals(count, max(count // 100, 1)))]
    results = []
    for name, n, phase in plans:
        if only and name not in only:
            continue
        log(f"redis_calls: {name} x {n}")
        results.append(_measure(name, n, phase))
    return results


def table(results: list[dict]) -> str:
    head = ("per operation", "calls sent", "of which scripts", "commands in scripts", "all commands",
            "redis-server CPU", "ops/s per Redis core")
    lines = [head]
    for d in results:
        lines.append((d["operation"], f"{d['calls_sent']:.2f}", f"{d['scripts']:.2f}", f"{d['commands_in_scripts']:.1f}",
                      f"{d['commands_total']:.1f}", f"{d['redis_cpu_ms'] * 1000:.0f} us",
                      f"{1000 / d['redis_cpu_ms']:,.0f}" if d["redis_cpu_ms"] else "-"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_calls", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="operations of each kind (default 1000)")
    parser.add_argument("--only", help="comma-separated: orchestration, StartInstance, timer, entity signal")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = run(args.count, tuple(s.strip() for s in args.only.split(",")) if args.only else None)
    print(table(results))
    for d in results:
        print(f"{d['operation']}: sent {d['sent_by_command']}; in scripts {d['in_scripts_by_command']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
