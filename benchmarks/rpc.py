"""StartInstance / GetInstance throughput and server CPU per call: ours against the SDK's in-memory backend.

Both servers run as subprocesses for the whole part; the client (this process,
sharing the cores with the servers) drives one side at a time: one grpc.aio
channel per side, 16 workers each with one call in flight, a warm-up, then a
timed window. Per round and RPC (Hello as the gRPC floor, StartInstance,
GetInstance) the two sides run back to back, the first side alternating between
rounds; ratios are medians of the per-round paired ratios (a noisy machine
drifts less within a pair than across the run).

Server CPU is utime+stime of the server process from /proc; for ours the
redis-server's own CPU (INFO cpu) is added, and shown apart.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2, wrappers_pb2

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

from . import ref_backend
from .common import (PartResult, Row, command_counts, log, machine_cpu_seconds, median, proc_context_switches,
                     proc_cpu_seconds, proc_syscalls, redis_client, redis_cpu_seconds, run_async, self_cpu_seconds)

TARGET_THROUGHPUT = 1.0  # ours/reference, at least (issue 11)
TARGET_CPU = 1.2  # ours/reference CPU per call, at most
INPUT = '{"orderId": 12345, "customer": "contoso", "items": [1, 2, 3]}'
NAME = "bench_orchestrator"


@dataclass
class Side:
    name: str
    address: str
    pid: int
    redis: object | None = None  # ours: the redis-server whose CPU is added
    stub: object = None
    created: list = None  # ids made by the last StartInstance window
    metadata: tuple = ()  # sent with every call (a bearer token)
    processes: tuple = ()  # the server's processes whose CPU counts (--processes N: supervisor and N); () = pid

    @property
    def pids(self) -> tuple:
        return self.processes or (self.pid,)


TOKEN = "bench-token"  # the secured side's tokens file holds its hash (admin, every hub)


async def _window(side: Side, call, make_request, concurrency: int, warmup: float, duration: float,
                  on_ok=None) -> dict:
    """Keep `concurrency` calls in flight; measure calls and CPU over `duration` after `warmup`."""
    state = {"ok": 0, "errors": 0, "stop": False, "first_error": None}

    async def worker(w: int) -> None:
        i = 0
        while not state["stop"]:
            request = make_request(w, i)
            i += 1
            try:
                await call(request)
            except grpc.aio.AioRpcError as exc:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or f"{exc.code().name}: {exc.details()}"
                continue
            state["ok"] += 1
            if on_ok is not None:
                on_ok(request)

    async def snapshot() -> tuple:
        redis_cpu = await redis_cpu_seconds(side.redis) if side.redis is not None else 0.0
        by_process = [proc_cpu_seconds(pid) for pid in side.pids]
        counts = command_counts(await side.redis.info("commandstats")) if side.redis is not None else (0, 0)
        return (state["ok"], sum(by_process), redis_cpu, self_cpu_seconds(), time.perf_counter(),
                *machine_cpu_seconds(), sum(proc_syscalls(pid) for pid in side.pids),
                sum(proc_context_switches(pid) for pid in side.pids), by_process, *counts)

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(warmup)
    s0 = await snapshot()
    await asyncio.sleep(duration)
    s1 = await snapshot()
    state["stop"] = True
    await asyncio.gather(*tasks)
    calls, seconds = s1[0] - s0[0], s1[4] - s0[4]
    per_call = 1000 / max(calls, 1)
    ours = sum(s1[i] - s0[i] for i in (1, 2, 3))  # server, redis-server, client
    return {
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": calls / seconds,
        "server_cpu_ms_per_call": (s1[1] - s0[1]) * per_call,
        "redis_cpu_ms_per_call": (s1[2] - s0[2]) * per_call,
        "client_cpu_ms_per_call": (s1[3] - s0[3]) * per_call,
        # Whole-machine CPU (in cores) used by everything else (other tenants) and stolen by the host.
        "other_load_cores": max(s1[5] - s0[5] - ours, 0.0) / seconds,
        "steal_cores": (s1[6] - s0[6]) / seconds,
        "server_syscalls_per_call": (s1[7] - s0[7]) / max(calls, 1),  # read + write calls of the server process
        "server_context_switches_per_call": (s1[8] - s0[8]) / max(calls, 1),
        "server_cores_by_process": [(b - a) / seconds for a, b in zip(s0[9], s1[9])],  # in the order of side.pids
        "redis_commands_per_call": (s1[10] - s0[10]) / max(calls, 1),
        "redis_scripts_per_call": (s1[11] - s0[11]) / max(calls, 1),
        "errors": state["errors"],
        "first_error": state["first_error"],
    }


RPCS = ("Hello", "StartInstance", "GetInstance")


def _requests(side: Side, rpc: str, tag: str):
    """(request factory, on_ok) for one window; StartInstance records ids for the next GetInstance."""
    if rpc == "Hello":  # does nothing on either side: the gRPC stack's own cost per call, for scale
        return (lambda w, i: empty_pb2.Empty()), None
    if rpc == "StartInstance":
        side.created = []
        return (lambda w, i: pb.CreateInstanceRequest(instanceId=f"{tag}-{w}-{i}", name=NAME,
                                                      input=wrappers_pb2.StringValue(value=INPUT))), \
            (lambda r: side.created.append(r.instanceId))
    ids = side.created
    if not ids:
        raise RuntimeError(f"{side.name}: no StartInstance succeeded, nothing to read")
    return (lambda w, i: pb.GetInstanceRequest(instanceId=ids[(w * 7919 + i * 31) % len(ids)],
                                               getInputsAndOutputs=True)), None


async def _rounds(sides: list[Side], cfg: dict) -> list[dict]:
    """Per round and RPC, one window per side; the order of the sides turns between rounds."""
    rounds = []
    channels = [grpc.aio.insecure_channel(side.address) for side in sides]
    try:
        for side, channel in zip(sides, channels):
            await asyncio.wait_for(channel.channel_ready(), 30)
            side.stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        for n in range(cfg["rounds"]):
            log(f"rpc round {n + 1}/{cfg['rounds']}")
            out: dict[str, dict] = {side.name: {} for side in sides}
            order = sides[n % len(sides):] + sides[:n % len(sides)]
            for rpc in RPCS:
                for side in order:
                    make_request, on_ok = _requests(side, rpc, f"r{n}")
                    call = functools.partial(getattr(side.stub, rpc), metadata=side.metadata)
                    r = await _window(side, call, make_request, cfg["concurrency"],
                                      cfg["warmup"], cfg["duration"], on_ok)
                    out[side.name][rpc] = r
                    log(f"  {side.name:9s} {rpc:13s} {r['calls_per_s']:6.0f} calls/s  server "
                        f"{r['server_cpu_ms_per_call']:.3f} + redis {r['redis_cpu_ms_per_call']:.3f} CPU-ms/call  "
                        f"client {r['client_cpu_ms_per_call']:.3f}  errors {r['errors']}  "
                        f"other load {r['other_load_cores']:.2f} cores")
            rounds.append(out)
    finally:
        for channel in channels:
            await channel.close()
    return rounds


def run(quick: bool = False, duration: float | None = None, rounds: int | None = None,
        concurrency: int = 16) -> PartResult:
    cfg = {"duration": duration or (2.0 if quick else 6.0), "warmup": 0.5 if quick else 1.0,
           "rounds": rounds or (1 if quick else 5), "concurrency": concurrency}
    result = PartResult("rpc", details={"config": cfg, "cpus": os.cpu_count()})
    ref_proc, ref_address = ref_backend.start()
    try:
        with testing.redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
            tokens = os.path.join(tmp, "tokens.json")
            with open(tokens, "w") as f:
                json.dump({"tokens": [{"name": "bench", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                                       "role": "admin", "hubs": ["*"]}]}, f)
            server = testing.start_server(redis_url)
            secured_server = testing.start_server(redis_url, "--key-prefix", "secured", "--auth-tokens-file", tokens,
                                                  "--metrics-port", str(testing.free_port()))
            try:
                ref = Side("reference", ref_address, ref_proc.pid)
                ours = Side("ours", server.address, server.pid)
                secured = Side("secured", secured_server.address, secured_server.pid,
                               metadata=(("authorization", f"Bearer {TOKEN}"),))

                async def main() -> list[dict]:
                    ours.redis = secured.redis = redis_client(redis_url)
                    try:
                        return await _rounds([ref, ours, secured], cfg)
                    finally:
                        await ours.redis.aclose()

                rounds_out = run_async(main)
            finally:
                server.stop()
                secured_server.stop()
    finally:
        ref_backend.stop(ref_proc)
    result.details["rounds"] = rounds_out
    _summarise(result, rounds_out)
    return result


def _summarise(result: PartResult, rounds_out: list[dict]) -> None:
    """Medians over rounds; the ratios are medians of the per-round (paired, back-to-back) ratios."""
    def per_round(side: str, rpc: str, *keys: str) -> list[float]:
        return [sum(r[side][rpc][k] for k in keys) for r in rounds_out]

    def med(side: str, rpc: str, *keys: str) -> float:
        return median(per_round(side, rpc, *keys))

    def paired(ours: list[float], ref: list[float]) -> float:
        return median([a / b for a, b in zip(ours, ref)])

    medians = {}
    for rpc in RPCS:
        ref_tput, our_tput = med("reference", rpc, "calls_per_s"), med("ours", rpc, "calls_per_s")
        ref_cpu, our_sched = med("reference", rpc, "server_cpu_ms_per_call"), med("ours", rpc, "server_cpu_ms_per_call")
        our_redis = med("ours", rpc, "redis_cpu_ms_per_call")
        our_total = med("ours", rpc, "server_cpu_ms_per_call", "redis_cpu_ms_per_call")
        ref_cpus = per_round("reference", rpc, "server_cpu_ms_per_call")
        t_ratio = paired(per_round("ours", rpc, "calls_per_s"), per_round("reference", rpc, "calls_per_s"))
        c_ratio = paired(per_round("ours", rpc, "server_cpu_ms_per_call", "redis_cpu_ms_per_call"), ref_cpus)
        s_ratio = paired(per_round("ours", rpc, "server_cpu_ms_per_call"), ref_cpus)
        r_ratio = paired(per_round("ours", rpc, "redis_cpu_ms_per_call"), ref_cpus)
        medians[rpc] = {"ours_calls_per_s": our_tput, "reference_calls_per_s": ref_tput,
                        "ours_cpu_ms_per_call": our_total, "ours_scheduler_cpu_ms_per_call": our_sched,
                        "ours_redis_cpu_ms_per_call": our_redis, "reference_cpu_ms_per_call": ref_cpu,
                        "throughput_ratio": t_ratio, "cpu_ratio": c_ratio}
        if rpc == "Hello":
            result.rows += [Row("rpc", "Hello calls/s (gRPC floor)", our_tput, ref_tput, t_ratio),
                            Row("rpc", "Hello server CPU/call", our_total, ref_cpu, c_ratio, unit="ms"),
                            Row("rpc", "  server r+w syscalls/call", med("ours", rpc, "server_syscalls_per_call"),
                                med("reference", rpc, "server_syscalls_per_call"))]
            continue
        result.rows += [
            Row("rpc", f"{rpc} calls/s", our_tput, ref_tput, t_ratio, f">= {TARGET_THROUGHPUT}x",
                t_ratio >= TARGET_THROUGHPUT),
            Row("rpc", f"{rpc} server CPU/call", our_total, ref_cpu, c_ratio, f"<= {TARGET_CPU}x",
                c_ratio <= TARGET_CPU, "ms"),
            Row("rpc", "  of which scheduler proc", our_sched, None, s_ratio, unit="ms"),
            Row("rpc", "  of which redis-server", our_redis, None, r_ratio, unit="ms"),
            Row("rpc", "  Redis commands/call", med("ours", rpc, "redis_commands_per_call")),
            Row("rpc", "    of which scripts", med("ours", rpc, "redis_scripts_per_call")),
            Row("rpc", "  server proc busy (cores)", our_sched * our_tput / 1000, ref_cpu * ref_tput / 1000),
            Row("rpc", "  server r+w syscalls/call", med("ours", rpc, "server_syscalls_per_call"),
                med("reference", rpc, "server_syscalls_per_call")),
            Row("rpc", "  server context switches/call", med("ours", rpc, "server_context_switches_per_call"),
                med("reference", rpc, "server_context_switches_per_call")),
            Row("rpc", "  client CPU/call (this proc)", med("ours", rpc, "client_cpu_ms_per_call"),
                med("reference", rpc, "client_cpu_ms_per_call"), None, unit="ms"),
        ]
        errors = sum(r[s][rpc]["errors"] for r in rounds_out for s in r)
        if errors:
            result.notes.append(f"{rpc}: {errors} calls failed (see details.rounds)")
    for rpc in RPCS:  # what bearer tokens and per-call metrics cost: the secured side against ours, same run
        sec_tput, sec_cpu = med("secured", rpc, "calls_per_s"), med("secured", rpc, "server_cpu_ms_per_call")
        result.rows += [
            Row("rpc", f"{rpc} calls/s with tokens + metrics", sec_tput, None,
                paired(per_round("secured", rpc, "calls_per_s"), per_round("ours", rpc, "calls_per_s"))),
            Row("rpc", f"  {rpc} scheduler CPU/call with them", sec_cpu, None,
                paired(per_round("secured", rpc, "server_cpu_ms_per_call"),
                       per_round("ours", rpc, "server_cpu_ms_per_call")), unit="ms"),
        ]
    result.details["medians"] = medians
    n, cfg = len(rounds_out), result.details["config"]
    other = [r[s][rpc]["other_load_cores"] for r in rounds_out for s in r for rpc in r[s]]
    result.notes.append(f"load from other processes on the machine during the windows: median {median(other):.2f}, "
                        f"max {max(other):.2f} cores (of {os.cpu_count()})")
    result.notes.append("'with tokens + metrics': a second server of ours with --auth-tokens-file and "
                        "--metrics-port, every call carrying a bearer token; its ratios are against ours without them")
    result.notes.append(
        f"{n} round(s); per round and RPC one window per side, back to back (the first side alternates); values are "
        f"medians over rounds, ratios the median of the per-round ours/reference ratios; {cfg['concurrency']} calls "
        f"in flight on one grpc.aio channel per side, {cfg['warmup']}s warm-up + {cfg['duration']}s window; the "
        f"client runs in the benchmark process and shares the {os.cpu_count()} cores with the servers (and "
        f"redis-server for ours)")
