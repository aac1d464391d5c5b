"""Throughput with the fleet: the e2e burst (one-activity orchestrations, official SDK worker and client)
against one replica, two replicas, one replica with ``--processes 2``, and one replica on a Redis Cluster of
one and of three masters.

Every set-up gets the same load: two SDK worker processes (with two replicas, one on each; otherwise both on
the one address) and one SDK client process that schedules a burst and waits for it (``e2e_driver burst``,
on the first replica). Set-ups run one after the other, each for ROUNDS bursts, the order turning between
rounds. Figures per set-up: orchestrations/s, and per orchestration the CPU of every server process, of every
redis-server (INFO cpu, summed over masters), of the SDK workers, and the Redis commands (inside scripts
too) and scripts. All on this machine's cores: what it shows is what the cores allow; the per-orchestration
costs are what a model of a bigger fleet takes (see benchmarks/README.md).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

import redis as redis_sync

from scheduler import testing

from . import e2e
from .common import PartResult, Row, calls_by_command, command_counts, log, machine_cpu_seconds, median, \
    proc_cpu_seconds

SETUPS = ("1 replica", "2 replicas", "1 replica, 2 processes", "cluster of 1 master", "cluster of 3 masters")


class FleetCpu:
    """CPU of every server process, redis-server (each master) and SDK worker; Redis command counts."""

    def __init__(self, server_pids: list[int], worker_pids: list[int], redis_urls: list[str]) -> None:
        self.server_pids, self.worker_pids = server_pids, worker_pids
        self.redis = [redis_sync.Redis.from_url(u) for u in redis_urls]

    def snapshot(self) -> dict:
        redis_cpu, commands, scripts, by_command = 0.0, 0, 0, {}
        for r in self.redis:
            info = r.info("cpu")
            redis_cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            stats = r.info("commandstats")
            c, s = command_counts(stats)
            commands, scripts = commands + c, scripts + s
            for k, n in calls_by_command(stats).items():
                by_command[k] = by_command.get(k, 0) + n
        return {"server": sum(proc_cpu_seconds(p) for p in self.server_pids), "redis": redis_cpu,
                "redis_commands": commands, "redis_scripts": scripts, "redis_by_command": by_command,
                "worker": sum(proc_cpu_seconds(p) for p in self.worker_pids), "machine": machine_cpu_seconds()[0]}

    def close(self) -> None:
        for r in self.redis:
            r.close()


def _cluster_masters(url: str) -> list[str]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    text = subprocess.run(["redis-cli", "-p", port, "cluster", "nodes"], capture_output=True, text=True,
                          check=True).stdout
    return [f"redis://{line.split()[1].split('@')[0]}/0" for line in text.splitlines() if "master" in line.split()[2]]


@contextlib.contextmanager
def _setup(name: str) -> Iterator[dict]:
    """The servers, redis-server(s) and two SDK workers of one set-up, running until the block ends."""
    cluster_nodes = {"cluster of 1 master": 1, "cluster of 3 masters": 3}.get(name)
    with (testing.redis_cluster(cluster_nodes) if cluster_nodes else testing.redis_server()) as url:
        extra = ["--redis-cluster"] if cluster_nodes else []
        if name == "1 replica, 2 processes":
            extra += ["--processes", "2"]
        servers = [testing.start_server(url, *extra) for _ in range(2 if name == "2 replicas" else 1)]
        try:
            pids = [pid for s in servers for pid in (s.pid, *(s.server_processes() if "processes" in name else []))]
            addresses = [s.address for s in servers]
            with e2e.worker_side(name, addresses[-1], servers[0].pid, None) as w1, \
                    e2e.worker_side(name, addresses[0], servers[0].pid, None) as w2:
                workers = [w["cpu"].worker_pid for w in (w1, w2)]
                cpu = FleetCpu(pids, workers, _cluster_masters(url) if cluster_nodes else [url])
                try:
                    yield {"name": name, "address": addresses[0], "cpu": cpu}
                finally:
                    cpu.close()
        finally:
            for s in servers:
                s.stop()


def run(quick: bool = False, rounds: int | None = None, burst: int | None = None,
        setups: tuple[str, ...] = SETUPS) -> PartResult:
    cfg = {"burst": burst or (300 if quick else 1000), "rounds": rounds or (1 if quick else 2)}
    result = PartResult("fleet", details={"config": cfg})
    per_setup: dict[str, list[dict]] = {s: [] for s in setups}
    for k in range(cfg["rounds"]):
        order = list(setups) if k % 2 == 0 else list(reversed(setups))
        for name in order:
            log(f"fleet round {k + 1}/{cfg['rounds']}: {name}, burst of {cfg['burst']}")
            with _setup(name) as side:
                e2e.phase(side["address"], side["cpu"], "burst", 100, f"warm-{k}")  # every stream and pool up
                out = e2e.phase(side["address"], side["cpu"], "burst", cfg["burst"], f"f{k}")
            per_setup[name].append(_figures(out))
    result.details["per_setup"] = per_setup
    base = median([f["tput"] for f in per_setup[setups[0]]])
    for name in setups:
        figs = per_setup[name]

        def med(key: str) -> float | None:
            return median([f[key] for f in figs])
        result.rows += [
            Row("fleet", f"{name}: orchestrations/s (ref: 1 replica)", med("tput"), base,
                (med("tput") or 0) / base if base else None),
            Row("fleet", "  server processes CPU/orchestration", med("server"), unit="ms"),
            Row("fleet", "  redis-server CPU/orchestration (all masters)", med("redis"), unit="ms"),
            Row("fleet", "  SDK workers CPU/orchestration", med("worker"), unit="ms"),
            Row("fleet", "  Redis commands / scripts per orchestration", med("commands"), med("scripts")),
            Row("fleet", "  busy: servers + redis + workers (cores)", med("busy")),
        ]
    result.notes.append(
        f"{cfg['rounds']} round(s) of a burst of {cfg['burst']} per set-up (after a warm-up burst of 100), the "
        f"set-ups' order turning; two SDK worker processes and one SDK client process in every set-up, all on "
        f"the machine's {os.cpu_count()} cores with the servers and redis-server(s)")
    return result


def _figures(out: dict) -> dict:
    c, n = out["cpu_seconds"], max(out["completed"], 1)
    return {"tput": out["completed"] / out["seconds"], "server": c["server"] * 1000 / n,
            "redis": c["redis"] * 1000 / n, "worker": c["worker"] * 1000 / n,
            "commands": c["redis_commands"] / n, "scripts": c["redis_scripts"] / n,
            "busy": (c["server"] + c["redis"] + c["worker"]) / out["seconds"], "completed": out["completed"],
            "count": out["count"], "at": time.time()}
