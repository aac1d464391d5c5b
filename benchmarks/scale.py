"""One replica with ``--processes 2`` against ``--processes 1``: StartInstance throughput and where the
CPU goes (each server process, the supervisor, redis-server, the client).

Both replicas run for the whole part on one redis-server (each with its own key prefix); the client
(this process, on the same cores) drives one at a time with rpc.py's window: a warm-up, then a timed
window, the first side alternating between rounds; the ratio is the median of the per-round
(back-to-back) ratios. SO_REUSEPORT spreads connections, not calls, over the processes, so the
client opens several channels (each its own connection) and turns its calls over them; both sides
get the same channels and calls in flight.
"""
from __future__ import annotations

import asyncio
import itertools
import os

import grpc

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

from .common import PartResult, Row, log, median, redis_client, run_async
from .rpc import Side, _requests, _window

RPC = "StartInstance"
SIDES = ("1 process", "2 processes")


async def _rounds(sides: list[Side], cfg: dict) -> list[dict]:
    rounds = []
    channels = {side.name: [grpc.aio.insecure_channel(side.address, options=[("grpc.use_local_subchannel_pool", 1)])
                            for _ in range(cfg["channels"])] for side in sides}
    try:
        for chans in channels.values():
            await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 30) for ch in chans))
        for n in range(cfg["rounds"]):
            log(f"scale round {n + 1}/{cfg['rounds']}")
            out = {}
            for side in sides[n % 2:] + sides[:n % 2]:
                stubs = itertools.cycle([getattr(pb_grpc.TaskHubSidecarServiceStub(ch), RPC)
                                         for ch in channels[side.name]])
                make_request, on_ok = _requests(side, RPC, f"r{n}")
                r = await _window(side, lambda request: next(stubs)(request), make_request, cfg["concurrency"],
                                  cfg["warmup"], cfg["duration"], on_ok)
                out[side.name] = r
                split = " + ".join(f"{c:.2f}" for c in r["server_cores_by_process"])
                log(f"  {side.name:11s} {r['calls_per_s']:6.0f} calls/s  server cores {split}  redis "
                    f"{_cores(r, 'redis')} client {_cores(r, 'client')}  errors {r['errors']}  "
                    f"other load {r['other_load_cores']:.2f} cores")
            rounds.append(out)
    finally:
        for chans in channels.values():
            for ch in chans:
                await ch.close()
    return rounds


def _cores(r: dict, who: str) -> float:
    """Cores busy over the window (CPU per call x calls per second)."""
    return round(r[f"{who}_cpu_ms_per_call"] * r["calls_per_s"] / 1000, 2)


def run(quick: bool = False, duration: float | None = None, rounds: int | None = None, concurrency: int = 32,
        channels: int = 16) -> PartResult:
    cfg = {"duration": duration or (2.0 if quick else 6.0), "warmup": 0.5 if quick else 1.0,
           "rounds": rounds or (1 if quick else 5), "concurrency": concurrency, "channels": channels}
    result = PartResult("scale", details={"config": cfg, "cpus": os.cpu_count()})
    with testing.redis_server() as redis_url:
        one = testing.start_server(redis_url, "--key-prefix", "one")
        two = testing.start_server(redis_url, "--key-prefix", "two", "--processes", "2")
        try:
            sides = [Side(SIDES[0], one.address, one.pid),
                     Side(SIDES[1], two.address, two.pid, processes=(two.pid, *two.server_processes()))]

            async def main() -> list[dict]:
                redis = redis_client(redis_url)
                for side in sides:
                    side.redis = redis
                try:
                    return await _rounds(sides, cfg)
                finally:
                    await redis.aclose()

            rounds_out = run_async(main)
        finally:
            one.stop()
            two.stop()
    result.details["rounds"] = rounds_out
    _summarise(result, rounds_out)
    return result


def _summarise(result: PartResult, rounds_out: list[dict]) -> None:
    def med(side: str, value) -> float:
        return median([value(r[side]) for r in rounds_out])

    single, double = SIDES
    ratios = [r[double]["calls_per_s"] / r[single]["calls_per_s"] for r in rounds_out]
    ratio = median(ratios)
    result.details["ratios"] = ratios
    result.rows += [
        Row("scale", f"{RPC} calls/s, 2 processes (ref: 1)", med(double, lambda r: r["calls_per_s"]),
            med(single, lambda r: r["calls_per_s"]), ratio),
        Row("scale", "  server processes busy (cores)", med(double, lambda r: sum(r["server_cores_by_process"])),
            med(single, lambda r: sum(r["server_cores_by_process"]))),
        Row("scale", "    process 1", med(double, lambda r: r["server_cores_by_process"][1]),
            med(single, lambda r: r["server_cores_by_process"][0])),
        Row("scale", "    process 2", med(double, lambda r: r["server_cores_by_process"][2])),
        Row("scale", "    supervisor", med(double, lambda r: r["server_cores_by_process"][0])),
        Row("scale", "  redis-server busy (cores)", med(double, lambda r: _cores(r, "redis")),
            med(single, lambda r: _cores(r, "redis"))),
        Row("scale", "  client busy (cores, this proc)", med(double, lambda r: _cores(r, "client")),
            med(single, lambda r: _cores(r, "client"))),
        Row("scale", "  server CPU/call (procs + redis)",
            med(double, lambda r: r["server_cpu_ms_per_call"] + r["redis_cpu_ms_per_call"]),
            med(single, lambda r: r["server_cpu_ms_per_call"] + r["redis_cpu_ms_per_call"]), unit="ms"),
        Row("scale", "  other load on the machine (cores)", med(double, lambda r: r["other_load_cores"]),
            med(single, lambda r: r["other_load_cores"])),
    ]
    errors = sum(r[s]["errors"] for r in rounds_out for s in r)
    if errors:
        result.notes.append(f"{errors} calls failed (see details.rounds)")
    cfg = result.details["config"]
    result.notes.append(f"per-round throughput ratios (2 processes / 1): {', '.join(f'{x:.2f}' for x in ratios)}")
    result.notes.append(
        f"'ours' is one replica with --processes 2, 'reference' the same with --processes 1, same redis-server; "
        f"{len(rounds_out)} round(s), one window per side back to back (the first alternating), medians over rounds, "
        f"the ratio the median of per-round ratios; {cfg['concurrency']} calls in flight over {cfg['channels']} "
        f"channels (connections), {cfg['warmup']}s warm-up + {cfg['duration']}s window; the client shares the "
        f"{os.cpu_count()} cores with the servers and redis-server")
