"""What ``--redis-min-replica-acks 1`` costs: every acknowledged write waits (Redis WAIT) until the
replica has it, against the same service with 0 (acknowledged once the primary has it).

The part starts a primary with one replica (``testing.redis_sentinels``: the Sentinels watch, they take
no part in the calls) and two replicas of the service on that primary, one per setting, each with its own
key prefix, for the whole part. Both sides pay for replication alike; the difference is the wait. Per
round and side, back to back (the first side alternating between rounds):

* ``StartInstance`` throughput with 32 calls in flight (rpc.py's window: a warm-up, then a timed window);
* ``StartInstance`` latency with one call in flight (the window's calls/s inverted);
* a burst of one-activity orchestrations run by an SDK worker (e2e.py's ``burst`` phase: schedule them all,
  wait until all completed), as orchestrations/s.

Figures are medians over rounds; ratios (acks 1 / acks 0) the median of the per-round ratios.
"""
from __future__ import annotations

import contextlib
import os

import grpc

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

from .common import PartResult, Row, log, median, redis_client, run_async
from .e2e import phase, worker_side
from .rpc import Side, _requests, _window

SIDES = ("acks 0", "acks 1")


async def _rpc_windows(sides: list[Side], cfg: dict, n: int) -> dict:
    out = {}
    for side in sides[n % 2:] + sides[:n % 2]:
        async with grpc.aio.insecure_channel(side.address) as channel:
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            for name, concurrency in (("throughput", cfg["concurrency"]), ("latency", 1)):
                make_request, on_ok = _requests(side, "StartInstance", f"{name}-{n}")
                r = await _window(side, stub.StartInstance, make_request, concurrency, cfg["warmup"],
                                  cfg["duration"], on_ok)
                out.setdefault(side.name, {})[name] = r
                log(f"  {side.name} StartInstance {name} ({concurrency} in flight): {r['calls_per_s']:.0f} calls/s, "
                    f"errors {r['errors']} {r['first_error'] or ''}")
    return out


def run(quick: bool = False, rounds: int | None = None, duration: float | None = None) -> PartResult:
    cfg = {"duration": duration or (2.0 if quick else 5.0), "warmup": 0.5 if quick else 1.0,
           "rounds": rounds or (1 if quick else 3), "concurrency": 32, "burst": 300 if quick else 1000}
    result = PartResult("wait", details={"config": cfg, "cpus": os.cpu_count()})
    rounds_out = []
    with testing.redis_sentinels(replicas=1) as topology:
        url = f"redis://127.0.0.1:{topology.primary_port()}/0"
        servers = [testing.start_server(url, "--key-prefix", "w0"),
                   testing.start_server(url, "--key-prefix", "w1", "--redis-min-replica-acks", "1")]
        try:
            sides = [Side(name, s.address, s.pid) for name, s in zip(SIDES, servers)]
            with contextlib.ExitStack() as stack:
                workers = [stack.enter_context(worker_side(s.name, s.address, s.pid, url)) for s in sides]
                for n in range(cfg["rounds"]):
                    log(f"wait round {n + 1}/{cfg['rounds']}")

                    async def main() -> dict:
                        redis = redis_client(url)
                        for side in sides:
                            side.redis = redis
                        try:
                            return await _rpc_windows(sides, cfg, n)
                        finally:
                            await redis.aclose()

                    out = run_async(main)
                    for worker in workers[n % 2:] + workers[:n % 2]:
                        burst = phase(worker["address"], worker["cpu"], "burst", cfg["burst"],
                                      f"{worker['name'].replace(' ', '')}-{n}")
                        out[worker["name"]]["burst"] = burst
                        log(f"  {worker['name']} burst of {cfg['burst']}: {burst['count'] / burst['seconds']:.0f} "
                            f"orchestrations/s ({burst['completed']} completed)")
                    rounds_out.append(out)
        finally:
            for s in servers:
                s.stop()
    result.details["rounds"] = rounds_out
    _summarise(result, rounds_out, cfg)
    return result


def _summarise(result: PartResult, rounds_out: list[dict], cfg: dict) -> None:
    zero, one = SIDES
    figures = {
        "StartInstance calls/s, 32 in flight": lambda r: r["throughput"]["calls_per_s"],
        "StartInstance latency, 1 in flight": lambda r: 1000 / r["latency"]["calls_per_s"],
        "one-activity orchestrations/s (burst)": lambda r: r["burst"]["count"] / r["burst"]["seconds"],
        "  server CPU/StartInstance (proc + redis)":
            lambda r: r["throughput"]["server_cpu_ms_per_call"] + r["throughput"]["redis_cpu_ms_per_call"],
    }
    for metric, value in figures.items():
        ratios = [value(r[one]) / value(r[zero]) for r in rounds_out]
        result.rows.append(Row("wait", f"{metric} (acks 1; ref: acks 0)", median([value(r[one]) for r in rounds_out]),
                               median([value(r[zero]) for r in rounds_out]), median(ratios),
                               unit="ms" if "latency" in metric or "CPU" in metric else ""))
        result.details.setdefault("ratios", {})[metric] = ratios
    incomplete = [(s, r[s]["burst"]["statuses"]) for r in rounds_out for s in r
                  if r[s]["burst"]["completed"] != cfg["burst"]]
    if incomplete:
        result.notes.append(f"bursts that did not complete every orchestration: {incomplete}")
    errors = sum(r[s][w]["errors"] for r in rounds_out for s in r for w in ("throughput", "latency"))
    if errors:
        result.notes.append(f"{errors} StartInstance calls failed (see details.rounds)")
    result.notes.append(
        f"'ours' is a replica with --redis-min-replica-acks 1, 'reference' one with 0, on the same primary with one "
        f"replica (both pay for replication); {len(rounds_out)} round(s), sides back to back, the first alternating; "
        f"{cfg['warmup']}s warm-up + {cfg['duration']}s per window; bursts of {cfg['burst']} one-activity "
        f"orchestrations with an SDK worker per side; everything shares the {os.cpu_count()} cores")
