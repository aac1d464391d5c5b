"""A million pending delayed starts: memory, a new replica's start while they wait, and promotion at 10,000/s.

On a three-master Redis Cluster that the part starts (``testing.redis_cluster``), then on a standalone
redis-server, one at a time:

1. a replica (``dt-scheduler serve``) starts against the hub while it is empty: the time to READY and to
   its first answered ``GetInstance``, and the Redis commands it issues until then (at least 3 s; the baseline);
2. COUNT instances (1,000,000; quick 20,000) with a 100-byte input are created through
   ``Store.create_instance`` (the StartInstance path) by two creator processes, due uniformly over
   COUNT / RATE seconds (RATE 10,000/s) starting after a lead time calibrated from a first run of 5,000
   (quick 1,000) on another hub; Redis ``used_memory`` (summed over the masters) before and after gives
   the memory per pending instance;
3. a new replica starts again, now with COUNT pending: the same times and Redis commands (nothing at start
   may scan the pending entries, so they stay where they were);
4. two promoters (Store + Wakeups + Promoter, as two replicas run them, in this process) promote them as
   they come due: each exactly once (the promoters' reports, the ready sets and the due sets agree), none
   early (promotion time - due time, both Redis clock, never < 0), lag p50/p99/max, the promoters' CPU
   and redis-server's per 1,000 promoted.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import grpc

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.store import Store

from . import creator, promotion
from .common import (PartResult, Row, connect_redis, log, redis_client, redis_time_ms, run_async,
                     self_cpu_seconds)

HUB = "pending"
RATE = 10_000  # promotions per second while they come due
TARGET_BYTES = 1024
STARTUP_WATCH_SECONDS = 3.0  # the new replica's Redis commands are counted until it answered, at least this long
WARM = 200  # instances due an hour later, so that every partition's keys exist before memory is measured
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def _masters(url: str, cluster: bool) -> list:
    """Plain clients of every master (one for a standalone Redis): memory, CPU and command counts add up."""
    if not cluster:
        return [redis_client(url)]
    port = url.rsplit(":", 1)[1].split("/")[0]
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    text = subprocess.run([cli, "-p", port, "cluster", "nodes"], capture_output=True, text=True, check=True).stdout
    addresses = [line.split()[1].split("@")[0] for line in text.splitlines() if "master" in line.split()[2]]
    return [redis_client(f"redis://{a}/0") for a in sorted(addresses)]


async def _sum_info(masters: list, section: str, fields: tuple[str, ...]) -> float:
    total = 0.0
    for m in masters:
        info = await m.info(section)
        total += sum(float(info[f]) for f in fields)
    return total


async def _commands(masters: list) -> dict[str, int]:
    """Calls so far by command name, summed over the masters (INFO commandstats)."""
    out: dict[str, int] = {}
    for m in masters:
        for name, stat in (await m.info("commandstats")).items():
            cmd = name.removeprefix("cmdstat_")
            out[cmd] = out.get(cmd, 0) + int(stat["calls"])
    return out


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0) and k not in ("info", "ping")}


async def _creators(url: str, cluster: bool, hub: str, count: int, first_due_ms: int, window_ms: int,
                    processes: int = 2, id_prefix: str = "p") -> dict:
    """Create ``count`` instances with ``processes`` creator processes (benchmarks/creator.py)."""
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.creator", url, hub, str(count), str(first_due_ms), str(window_ms),
        "--part", f"{k}/{processes}", "--id-prefix", id_prefix, *(["--cluster"] if cluster else []),
        cwd=REPO, stdout=asyncio.subprocess.PIPE) for k in range(processes)]
    outs = []
    for proc in procs:
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"creator process failed with code {proc.returncode}")
        outs.append(json.loads(out.decode().strip().splitlines()[-1]))
    return {"created": sum(o["created"] for o in outs), "start_ms": min(o["start_ms"] for o in outs),
            "end_ms": max(o["end_ms"] for o in outs)}


def _first_answer(address: str, instance_id: str, timeout: float = 60.0) -> float:
    """Seconds until GetInstance of ``instance_id`` answers (any status but UNAVAILABLE)."""
    t0 = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        while True:
            try:
                stub.GetInstance(pb.GetInstanceRequest(instanceId=instance_id), metadata=[("taskhub", HUB)],
                                 timeout=5)
                return time.monotonic() - t0
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.01)


async def _startup(url: str, cluster: bool, masters: list, instance_id: str) -> dict:
    """A new replica starts: seconds to READY and to its first GetInstance answer, and the Redis commands
    and redis-server CPU from its start until it answered, at least STARTUP_WATCH_SECONDS (nothing else uses
    Redis meanwhile)."""
    c0, cpu0 = await _commands(masters), await _sum_info(masters, "cpu", ("used_cpu_sys", "used_cpu_user"))
    t0 = time.monotonic()
    server = await asyncio.to_thread(lambda: testing.start_server(url, *(["--redis-cluster"] if cluster else []),
                                                                  startup_timeout=120))
    try:
        ready = time.monotonic() - t0
        answer = ready + await asyncio.to_thread(_first_answer, server.address, instance_id)
        await asyncio.sleep(max(STARTUP_WATCH_SECONDS - (time.monotonic() - t0), 0))
        c1, cpu1 = await _commands(masters), await _sum_info(masters, "cpu", ("used_cpu_sys", "used_cpu_user"))
        watched = time.monotonic() - t0
    finally:
        await asyncio.to_thread(server.stop)
    commands = _delta(c0, c1)
    return {"ready_s": ready, "first_answer_s": answer, "commands": sum(commands.values()),
            "by_command": dict(sorted(commands.items(), key=lambda kv: -kv[1])),
            "redis_cpu_ms": (cpu1 - cpu0) * 1000, "watched_s": watched}


async def _topology(url: str, cluster: bool, count: int, calibration: int, spare_ms: int) -> dict:
    masters = await _masters(url, cluster)
    redis = connect_redis(url, cluster)
    lags = promotion.Lags()
    lags.expected = count
    try:
        store = Store(redis)
        await store.load_scripts()
        hub = await store.ensure_hub(HUB)
        far = await redis_time_ms(masters[0]) + 3_600_000
        await creator.create(store, HUB, creator.due_times(WARM, far, 1000), id_prefix="warm-")
        now = await redis_time_ms(masters[0])
        calib = await _creators(url, cluster, "calibration", calibration, now + 7_200_000, 1000, id_prefix="c")
        rate = calib["created"] / max(calib["end_ms"] - calib["start_ms"], 1) * 1000
        window_ms = count * 1000 // RATE
        empty = await _startup(url, cluster, masters, "nobody")
        log(f"  a new replica on an empty hub: READY in {empty['ready_s']:.2f}s, first answer "
            f"{empty['first_answer_s']:.2f}s, {empty['commands']} Redis commands in {empty['watched_s']:.1f}s")
        # the lead covers the creation (twice its calibrated time) and, after it, a new replica's start (twice
        # what it took on the empty hub): that replica serves the hub too, and must be gone before the first is due
        lead_ms = int(2 * count / rate * 1000 + 2000 * (empty["first_answer_s"] + STARTUP_WATCH_SECONDS) + spare_ms)
        log(f"  creation rate {rate:,.0f}/s (2 processes): lead {lead_ms / 1000:.0f}s for {count:,}, "
            f"due over {window_ms / 1000:.0f}s")
        used0 = await _sum_info(masters, "memory", ("used_memory",))
        first_due = await redis_time_ms(masters[0]) + lead_ms
        made = await _creators(url, cluster, HUB, count, first_due, window_ms)
        used1 = await _sum_info(masters, "memory", ("used_memory",))
        log(f"  created {made['created']:,} in {(made['end_ms'] - made['start_ms']) / 1000:.0f}s; "
            f"{(used1 - used0) / made['created']:.0f} B each")
        loaded = await _startup(url, cluster, masters, "p0-0")
        log(f"  a new replica with {count:,} pending: READY in {loaded['ready_s']:.2f}s, first answer "
            f"{loaded['first_answer_s']:.2f}s, {loaded['commands']} Redis commands in {loaded['watched_s']:.1f}s")

        async with promotion.Replicas(url, HUB, 2, lags, cluster=cluster):
            margin = first_due - await redis_time_ms(masters[0])
            cpu = await _watch(masters, lags, first_due, window_ms / 1000 + 60)
            await asyncio.sleep(0.5)  # a straggling duplicate would show up here
        ready = due = 0
        for pk in hub.all_partitions():
            ready += await redis.zcard(pk.ready)
            due += await redis.zcard(pk.due)
        out = lags.stats()
        span_ms = max((lags.last_ms or first_due) - first_due, 1)
        out.update(cpu, count=count, created=made["created"], window_ms=window_ms, lead_ms=lead_ms,
                   creation_rate_per_s=made["created"] / max(made["end_ms"] - made["start_ms"], 1) * 1000,
                   creation_margin_ms=margin, ready_after=ready, due_after=due - WARM,
                   exactly_once=len(lags.lags) == made["created"] == ready and due == WARM,
                   promotions_per_s=len(lags.lags) / span_ms * 1000,
                   bytes_per_instance=(used1 - used0) / made["created"], masters=len(masters),
                   startup_empty=empty, startup_loaded=loaded)
        return out
    finally:
        await redis.aclose()
        for m in masters:
            await m.aclose()


async def _watch(masters: list, lags: promotion.Lags, first_due: int, timeout_s: float) -> dict:
    """From the first due time until everything is promoted: CPU of the promoters (this process) and of Redis."""
    await asyncio.sleep(max(first_due - await redis_time_ms(masters[0]), 0) / 1000)
    fields = ("used_cpu_sys", "used_cpu_user")
    t0, cpu0, rcpu0 = time.perf_counter(), self_cpu_seconds(), await _sum_info(masters, "cpu", fields)
    c0 = await _commands(masters)
    try:
        await asyncio.wait_for(lags.done.wait(), timeout_s)
    except asyncio.TimeoutError:
        log("  not everything was promoted in time")
    elapsed, cpu = time.perf_counter() - t0, self_cpu_seconds() - cpu0
    rcpu = await _sum_info(masters, "cpu", fields) - rcpu0
    commands = _delta(c0, await _commands(masters))
    n = max(len(lags.lags), 1)
    return {"promoter_cpu_ms_per_1000": cpu * 1e6 / n, "redis_cpu_ms_per_1000": rcpu * 1e6 / n,
            "promoters_busy_cores": cpu / elapsed, "redis_busy_cores": rcpu / elapsed,
            "redis_commands_per_1000": sum(commands.values()) * 1000 / n, "window_commands": commands}


def run(quick: bool = False, count: int | None = None, topologies: tuple[str, ...] = ("cluster", "standalone")
        ) -> PartResult:
    count = count or (20_000 if quick else 1_000_000)
    calibration = 1000 if quick else 5000
    result = PartResult("pending", details={"count": count, "rate": RATE})
    for topology in topologies:
        cluster = topology == "cluster"
        log(f"pending: {count:,} delayed starts on a {'3-master Redis Cluster' if cluster else 'standalone Redis'}, "
            f"due at {RATE:,}/s")
        with (testing.redis_cluster() if cluster else testing.redis_server()) as url:
            d = run_async(lambda: _topology(url, cluster, count, calibration, 10_000 if quick else 20_000))
        result.details[topology] = d
        _rows(result, topology, d)
    return result


def _rows(result: PartResult, topology: str, d: dict) -> None:
    t = "cluster3" if topology == "cluster" else "standalone"
    empty, loaded = d["startup_empty"], d["startup_loaded"]
    result.rows += [
        Row("pending", f"{t}: promoted (2 promoters)", d["promoted"], target=f"{d['created']:,} exactly once",
            ok=d["exactly_once"]),
        Row("pending", f"{t}: early promotions", d["early"], target="0", ok=d["early"] == 0),
        Row("pending", f"{t}: lag p50 / p99", d["lag_p50_ms"], d["lag_p99_ms"], unit="ms",
            target=f"max {d['lag_max_ms']} ms"),
        Row("pending", f"{t}: promotions/s over the window", d["promotions_per_s"], unit="/s",
            target=f"due at {RATE:,}/s"),
        Row("pending", f"{t}: used_memory per pending instance", d["bytes_per_instance"], unit="B",
            target=f"<= {TARGET_BYTES} B", ok=d["bytes_per_instance"] <= TARGET_BYTES),
        Row("pending", f"{t}: promoter CPU per 1000 (2 promoters)", d["promoter_cpu_ms_per_1000"], unit="ms",
            target=f"{d['promoters_busy_cores']:.2f} cores busy"),
        Row("pending", f"{t}: redis-server CPU per 1000", d["redis_cpu_ms_per_1000"], unit="ms",
            target=f"{d['redis_busy_cores']:.2f} cores busy"),
        Row("pending", f"{t}: Redis commands per 1000 promoted", d["redis_commands_per_1000"]),
        Row("pending", f"{t}: new replica READY (ref: empty hub)", loaded["ready_s"], empty["ready_s"],
            loaded["ready_s"] / empty["ready_s"], unit="s"),
        Row("pending", f"{t}: new replica first answer (ref: empty)", loaded["first_answer_s"],
            empty["first_answer_s"], loaded["first_answer_s"] / empty["first_answer_s"], unit="s"),
        Row("pending", f"{t}: its Redis commands until it answered (ref: empty)", loaded["commands"],
            empty["commands"]),
        Row("pending", f"{t}: its redis-server CPU meanwhile (ref: empty)",
            loaded["redis_cpu_ms"], empty["redis_cpu_ms"], unit="ms",
            target=f"{loaded['watched_s']:.1f}s / {empty['watched_s']:.1f}s"),
    ]
    margin = d["creation_margin_ms"]
    result.notes.append(
        f"{t}: {d['created']:,} created at {d['creation_rate_per_s']:,.0f}/s by 2 creator processes, due over "
        f"{d['window_ms'] / 1000:.0f}s; the promoters started {margin / 1000:.1f}s before the first due time"
        + (" (LATE: measurement disturbed)" if margin < 0 else "")
        + f"; {d['masters']} master(s); after the run ready={d['ready_after']:,} due={d['due_after']:,}; "
          f"per promoter {d['by_promoter']}")
    result.notes.append(f"{t}: the new replica's Redis commands from its start until it answered (at least "
                        f"{STARTUP_WATCH_SECONDS:.0f}s) with "
                        f"{d['created']:,} pending {loaded['by_command']}, on the empty hub {empty['by_command']}")
