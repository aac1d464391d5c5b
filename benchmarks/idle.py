"""What an idle replica costs: CPU of our server and of redis-server, and Redis commands per second, while
10 task hubs of 16 partitions exist and 10 work streams (one per hub) wait for work that never comes.

The streams are raw ``GetWorkItems`` calls on one grpc.aio channel in this process (what an SDK worker
does between work items). After a warm-up (the hubs are created, the streams open), the window measures
utime+stime of the server process from /proc, redis-server's ``INFO cpu`` and the change of
``total_commands_processed`` (the INFO calls themselves are subtracted). Target: <= 1% of a core.
"""
from __future__ import annotations

import asyncio
import time

import grpc

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

from .common import PartResult, Row, log, proc_cpu_seconds, redis_client, redis_cpu_seconds, run_async

HUBS = 10
PARTITIONS = 16
TARGET_CORE_SHARE = 0.01


async def _commands(redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


async def _measure(address: str, pid: int, redis_url: str, seconds: float) -> dict:
    redis = redis_client(redis_url)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        streams = []
        for n in range(HUBS):
            metadata = (("taskhub", f"idle{n}"),)
            await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=metadata)
            streams.append(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=metadata))
        readers = [asyncio.ensure_future(_read_all(s)) for s in streams]
        await asyncio.sleep(3)  # warm-up: every hub served, every stream open and waiting
        cpu0, rcpu0, cmd0, t0 = proc_cpu_seconds(pid), await redis_cpu_seconds(redis), await _commands(redis), \
            time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, rcpu1, cmd1, t1 = proc_cpu_seconds(pid), await redis_cpu_seconds(redis), await _commands(redis), \
            time.monotonic()
        for s in streams:
            s.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    await redis.aclose()
    window = t1 - t0
    return {"window_seconds": window, "server_core_share": (cpu1 - cpu0) / window,
            "redis_core_share": (rcpu1 - rcpu0) / window,
            "redis_commands_per_second": (cmd1 - cmd0 - 3) / window}  # 3: our INFO calls in the window


async def _read_all(stream) -> None:
    async for _ in stream:  # health pings only
        pass


def run(quick: bool = False) -> PartResult:
    seconds = 15.0 if quick else 60.0
    log(f"idle: {HUBS} hubs x {PARTITIONS} partitions, {HUBS} idle streams, {seconds:g} s")
    with testing.redis_server() as redis_url:
        server = testing.start_server(redis_url, "--partitions", str(PARTITIONS))
        try:
            d = run_async(lambda: _measure(server.address, server.pid, redis_url, seconds))
        finally:
            server.stop()
    share = d["server_core_share"]
    log(f"idle: server {share:.2%} of a core, redis-server {d['redis_core_share']:.2%}, "
        f"{d['redis_commands_per_second']:.0f} Redis commands/s")
    return PartResult("idle", rows=[
        Row("idle", "server CPU (share of a core)", share * 100, target=f"<= {TARGET_CORE_SHARE:.0%}",
            ok=share <= TARGET_CORE_SHARE, unit="%"),
        Row("idle", "redis-server CPU (share of a core)", d["redis_core_share"] * 100, unit="%"),
        Row("idle", "Redis commands per second", d["redis_commands_per_second"], unit="/s"),
    ], details=d)
