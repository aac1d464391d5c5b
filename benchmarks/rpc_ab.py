"""Paired A/B of two source trees of this service on one RPC: is a change worth a few percent?

    python -m benchmarks.rpc_ab A_TREE B_TREE [--rpc GetInstance] [--pairs 30] [--window 1] [--reference]

Runs ``dt-scheduler serve`` from each tree (a checkout or ``git worktree``; the tree's own
``scheduler`` package, through PYTHONPATH, from a neutral working directory) on one
redis-server, and drives one side at a time with the load of :mod:`benchmarks.rpc` (16 calls
in flight) in many short windows, the order turning each round. Prints the median and quartiles
of the per-pair B/A ratios of throughput and server CPU per call (our process, redis-server).
On this shared 2-core machine a single window moves by 10-20%; the ratio of two windows
taken back to back moves far less, and 30 of them tell a 3% change from noise. With
``--reference`` the SDK's in-memory backend takes a window in each round too, and A and B
are also given against it (as :mod:`benchmarks.rpc` does, with redis-server counted in ours).
"""
from __future__ import annotations

import argparse
import os
import sys

import grpc

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

from . import ref_backend, rpc
from .common import median, redis_client, run_async


async def _pairs(sides: list[rpc.Side], method: str, pairs: int, window: float) -> dict[str, list[dict]]:
    channels = [grpc.aio.insecure_channel(side.address) for side in sides]
    try:
        for side, channel in zip(sides, channels):
            await channel.channel_ready()
            side.stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            if method == "GetInstance" and not side.created:  # instances to read
                make, on_ok = rpc._requests(side, "StartInstance", "ab")
                await rpc._window(side, side.stub.StartInstance, make, 16, 0.2, 2.0, on_ok)
        out: dict[str, list[dict]] = {side.name: [] for side in sides}
        for n in range(pairs):
            for side in sides[n % len(sides):] + sides[:n % len(sides)]:
                make, on_ok = rpc._requests(side, method, f"p{n}")
                out[side.name].append(await rpc._window(side, getattr(side.stub, method), make, 16, 0.2, window,
                                                        on_ok))
        return out
    finally:
        for channel in channels:
            await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rpc_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="source tree A (the one that holds its scheduler/ package)")
    parser.add_argument("b", help="source tree B")
    parser.add_argument("--rpc", choices=rpc.RPCS, default="GetInstance")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--reference", action="store_true", help="also the SDK's in-memory backend, in every round")
    args = parser.parse_args(argv)
    trees = [os.path.abspath(args.a), os.path.abspath(args.b)]
    names = ["A", "B"]
    reference = ref_backend.start() if args.reference else None
    try:
        out = _run(args, trees, names, reference)
    finally:
        if reference is not None:
            ref_backend.stop(reference[0])
    _report(args, trees, names, out)
    return 0


def _run(args, trees: list[str], names: list[str], reference) -> dict[str, list[dict]]:
    with testing.redis_server() as url:
        servers = []
        cwd = os.getcwd()
        os.chdir("/")  # `python -m scheduler` would import the package of the working directory first
        try:
            for name, tree in zip(names, trees):
                servers.append(testing.start_server(url, "--key-prefix", name, env={"PYTHONPATH": tree}))
        finally:
            os.chdir(cwd)
        try:
            async def go() -> dict[str, list[dict]]:
                redis = redis_client(url)
                try:
                    sides = [rpc.Side(name, s.address, s.pid, redis=redis) for name, s in zip(names, servers)]
                    if reference is not None:
                        sides.append(rpc.Side("R", reference[1], reference[0].pid))
                    return await _pairs(sides, args.rpc, args.pairs, args.window)
                finally:
                    await redis.aclose()

            return run_async(go)
        finally:
            for server in servers:
                server.stop()


def _report(args, trees: list[str], names: list[str], out: dict[str, list[dict]]) -> None:
    if "R" in out:
        trees, names = [*trees, "the SDK's in-memory backend"], [*names, "R"]
    for name, tree in zip(names, trees):
        ws = out[name]
        print(f"{name} {tree}: {median([w['calls_per_s'] for w in ws]):.0f} calls/s, CPU/call "
              f"{median([w['server_cpu_ms_per_call'] for w in ws]):.3f} ms + redis-server "
              f"{median([w['redis_cpu_ms_per_call'] for w in ws]):.3f} ms, other load "
              f"{median([w['other_load_cores'] for w in ws]):.2f} cores")
    measures = (("throughput", lambda w: w["calls_per_s"]),
                ("CPU/call, our process", lambda w: w["server_cpu_ms_per_call"]),
                ("CPU/call, + redis-server", lambda w: w["server_cpu_ms_per_call"] + w["redis_cpu_ms_per_call"]))
    pairs = [("B", "A")] + ([("A", "R"), ("B", "R")] if "R" in out else [])
    for b, a in pairs:
        for label, value in measures:
            if a == "R" and label.startswith("CPU"):  # the reference has no redis-server: against its process
                ratios = sorted(value(y) / x["server_cpu_ms_per_call"] for x, y in zip(out[a], out[b]))
            else:
                ratios = sorted(value(y) / value(x) for x, y in zip(out[a], out[b]))
            q = len(ratios) // 4
            print(f"{b}/{a} {args.rpc} {label:26s} median {median(ratios):.3f}  "
                  f"(quartiles {ratios[q]:.3f}-{ratios[-1 - q]:.3f})")


if __name__ == "__main__":
    sys.exit(main())
