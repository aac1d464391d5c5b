"""What an idle replica costs: CPU of our server and of redis-server, and Redis commands per second, while
10 task hubs of 16 partitions exist and 10 work streams (one per hub) wait for work that never comes.

The streams are raw ``GetWorkItems`` calls on one grpc.aio channel in this process (what an SDK worker
does between work items). After a warm-up (the hubs are created, the streams open), the window measures
utime+stime of the server process from /proc, redis-server's ``INFO cpu`` and the change of
``total_commands_processed`` (the INFO calls themselves are subtracted). Target: <= 1% of a core.

The idle cost of many hubs on several replicas (no streams; every replica serves every hub):
``python -m benchmarks.idle --hubs 100 --replicas 3 [--streams 0] [--seconds 30]`` prints the Redis
commands per second of them all, and the commands that make them up (``INFO commandstats``).
"""
from __future__ import annotations

import argparse
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
WARM_UP_SECONDS = 3.0


async def _commands(redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


async def _commandstats(redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in (await redis.info("commandstats")).items()}


async def _measure(address: str, pids: list[int], redis_url: str, seconds: float, hubs: int = HUBS,
                   streams: int = HUBS) -> dict:
    redis = redis_client(redis_url)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        calls = []
        for n in range(hubs):
            metadata = (("taskhub", f"idle{n}"),)
            await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=metadata)
            if n < streams:
                calls.append(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=metadata))
        readers = [asyncio.ensure_future(_read_all(s)) for s in calls]
        await asyncio.sleep(WARM_UP_SECONDS)  # warm-up: every hub served (the refresh), every stream open
        stats0 = await _commandstats(redis)
        cpu0, rcpu0, cmd0, t0 = sum(map(proc_cpu_seconds, pids)), await redis_cpu_seconds(redis), \
            await _commands(redis), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, rcpu1, cmd1, t1 = sum(map(proc_cpu_seconds, pids)), await redis_cpu_seconds(redis), \
            await _commands(redis), time.monotonic()
        stats1 = await _commandstats(redis)
        for s in calls:
            s.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    await redis.aclose()
    window = t1 - t0
    by_command = {name: (stats1[name] - stats0.get(name, 0)) / window for name in stats1
                  if name != "info" and stats1[name] > stats0.get(name, 0)}
    return {"window_seconds": window, "server_core_share": (cpu1 - cpu0) / window,
            "redis_core_share": (rcpu1 - rcpu0) / window,
            "redis_commands_per_second": (cmd1 - cmd0 - 3) / window,  # 3: our INFO calls in the window
            "by_command": dict(sorted(by_command.items(), key=lambda kv: -kv[1]))}


async def _read_all(stream) -> None:
    async for _ in stream:  # health pings only
        pass


def measure(hubs: int, replicas: int, streams: int, seconds: float, partitions: int = PARTITIONS) -> dict:
    """Start a redis-server and ``replicas`` servers on it, create ``hubs`` hubs through the first (with a
    stream on the first ``streams`` of them), and measure a window of ``seconds`` once they are idle."""
    with testing.redis_server() as redis_url:
        servers = []
        try:
            for _ in range(replicas):
                servers.append(testing.start_server(redis_url, "--partitions", str(partitions)))
            return run_async(lambda: _measure(servers[0].address, [s.pid for s in servers], redis_url, seconds,
                                              hubs, streams))
        finally:
            for server in servers:
                server.stop()


def run(quick: bool = False) -> PartResult:
    seconds = 15.0 if quick else 60.0
    log(f"idle: {HUBS} hubs x {PARTITIONS} partitions, {HUBS} idle streams, {seconds:g} s")
    d = measure(HUBS, 1, HUBS, seconds)
    share = d["server_core_share"]
    log(f"idle: server {share:.2%} of a core, redis-server {d['redis_core_share']:.2%}, "
        f"{d['redis_commands_per_second']:.0f} Redis commands/s")
    log(f"idle: 100 hubs x {PARTITIONS} partitions, 3 replicas, no streams, {seconds:g} s")
    many = measure(100, 3, 0, seconds)
    log(f"idle: 3 replicas, 100 hubs: {many['redis_commands_per_second']:.0f} Redis commands/s")
    return PartResult("idle", rows=[
        Row("idle", "server CPU (share of a core)", share * 100, target=f"<= {TARGET_CORE_SHARE:.0%}",
            ok=share <= TARGET_CORE_SHARE, unit="%"),
        Row("idle", "redis-server CPU (share of a core)", d["redis_core_share"] * 100, unit="%"),
        Row("idle", "Redis commands per second", d["redis_commands_per_second"], unit="/s"),
        Row("idle", "Redis commands/s, 100 hubs x 3 replicas", many["redis_commands_per_second"],
            target="<= 300", ok=many["redis_commands_per_second"] <= 300, unit="/s"),
    ], details={**d, "hubs_100_replicas_3": many})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__)
    parser.add_argument("--hubs", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--streams", type=int, default=0, help="idle work streams, one on each of the first hubs")
    parser.add_argument("--partitions", type=int, default=PARTITIONS)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    d = measure(args.hubs, args.replicas, args.streams, args.seconds, args.partitions)
    print(f"{args.hubs} hubs x {args.partitions} partitions, {args.replicas} replicas, {args.streams} streams: "
          f"{d['redis_commands_per_second']:.1f} Redis commands/s, servers {d['server_core_share']:.2%} of a core, "
          f"redis-server {d['redis_core_share']:.2%}")
    for name, rate in d["by_command"].items():
        print(f"  {name:24s} {rate:9.1f}/s")


if __name__ == "__main__":
    main()
