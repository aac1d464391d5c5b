"""Where does our server's per-call CPU go? py-spy on ``dt-scheduler serve`` under the rpc benchmark's load.

    python -m benchmarks.profile_server [--rpc StartInstance|GetInstance] [--duration 10] [--native]
                                        [--reference]

Starts a fresh redis-server and our server (or, with --reference, the SDK's
in-memory backend), drives the same load as :mod:`benchmarks.rpc` (16 calls in
flight on one channel), records the server with ``py-spy record --nonblocking``
(``pip install py-spy``) and prints the top functions by own and by inclusive
time. Raw folded stacks go to ``benchmarks/results/profile-<rpc>.txt`` (feed them
to flamegraph.pl or speedscope).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sys

import grpc
from google.protobuf import wrappers_pb2

from scheduler import testing
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc

from . import ref_backend, rpc
from .common import log, run_async

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# Where a sample's CPU goes: the frame nearest the leaf that names a layer decides, but the search stops
# at the event loop's dispatch (a callback run by uvloop, a task step), so the loop's own work and its
# socket I/O (reads, epoll) count as asyncio/uvloop, and what a callback does counts to its own layer.
# A sample whose leaf waits in epoll is idle (with --native, py-spy samples blocked threads too).
LAYERS = (
    ("protobuf", ("_message.abi3", "upb_", "protobuf/")),
    ("redis client", ("scheduler/store/pipelining.py", "hiredis", "redis/")),
    ("gRPC", ("grpc/", "cygrpc", "grpc_", "grpc::", "grpc_core")),
    ("our code", ("scheduler/",)),
)
_DISPATCH = ("Handle__run", "task_step_impl", "TaskStepMethWrapper_call", "uv__io_poll", "uv__run_idle",
             "uv__run_timers", "run_forever")
_LOOP = ("asyncio/", "_asynciomodule", "loop.c", "uv_", "uv__", "uvloop")
_IDLE = ("epoll_wait", "epoll_pwait")


def layer_of(frames: list[str]) -> str:
    """The layer one sample's CPU is counted to (``frames``: root first, as py-spy writes them)."""
    if not frames or frames[-1].startswith(_IDLE):
        return "idle"
    loop = False
    for frame in reversed(frames):
        for name, signs in LAYERS:
            if any(sign in frame for sign in signs):
                return name
        if any(sign in frame for sign in _LOOP):
            loop = True
        if frame.startswith(_DISPATCH):
            return "asyncio/uvloop"
    return "asyncio/uvloop" if loop else "interpreter, other"


def breakdown(folded_path: str) -> str:
    """Share of the non-idle samples per layer (meaningful with --native: without it the native code
    of gRPC and uvloop is counted to the Python frame that entered it)."""
    counts: collections.Counter[str] = collections.Counter()
    with open(folded_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if n.isdigit():
                counts[layer_of([fr for fr in stack.split(";") if fr])] += int(n)
    busy = sum(n for name, n in counts.items() if name != "idle")
    out = [f"-- CPU by layer ({busy} busy samples, {counts['idle']} idle left out)"]
    out += [f"{100 * counts[name] / max(busy, 1):5.1f}%  {name}"
            for name in ("gRPC", "asyncio/uvloop", "protobuf", "redis client", "our code", "interpreter, other")]
    return "\n".join(out)


def top_functions(folded_path: str, limit: int = 25) -> str:
    """Own and inclusive share of samples per function, from py-spy's raw (folded) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(folded_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            total += count
            frames = [fr for fr in stack.split(";") if fr]
            if not frames:
                continue
            own[frames[-1]] += count
            for fr in set(frames):
                inclusive[fr] += count
    out = [f"{total} samples", "-- own time"]
    out += [f"{100 * n / max(total, 1):5.1f}%  {fn}" for fn, n in own.most_common(limit)]
    out.append("-- inclusive time")
    out += [f"{100 * n / max(total, 1):5.1f}%  {fn}" for fn, n in inclusive.most_common(limit)]
    return "\n".join(out)


async def _load(address: str, which: str, warmup: float, duration: float, pid: int, py_spy_cmd: list[str]) -> dict:
    side = rpc.Side("profiled", address, pid)
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)

        def start_request(w: int, i: int) -> pb.CreateInstanceRequest:
            return pb.CreateInstanceRequest(instanceId=f"p-{w}-{i}", name=rpc.NAME,
                                            input=wrappers_pb2.StringValue(value=rpc.INPUT))

        ids = []
        if which == "GetInstance":  # ids to read, created first
            await rpc._window(side, stub.StartInstance, start_request, 16, 0, 2.0,
                              on_ok=lambda r: ids.append(r.instanceId))

        def get_request(w: int, i: int) -> pb.GetInstanceRequest:
            return pb.GetInstanceRequest(instanceId=ids[(w * 7919 + i * 31) % len(ids)], getInputsAndOutputs=True)

        call, make = ((stub.StartInstance, lambda w, i: start_request(w + 1000, i)) if which == "StartInstance"
                      else (stub.GetInstance, get_request))
        spy = await asyncio.create_subprocess_exec(*py_spy_cmd)
        result = await rpc._window(side, call, make, 16, warmup, duration)
        if await spy.wait() != 0:
            raise RuntimeError(f"py-spy failed with code {spy.returncode}")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc", choices=("StartInstance", "GetInstance"), default="StartInstance")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument("--reference", action="store_true", help="profile the SDK's in-memory backend instead")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    os.makedirs(RESULTS, exist_ok=True)
    tag = f"{'reference-' if args.reference else ''}{args.rpc}"
    folded = os.path.join(RESULTS, f"profile-{tag}.txt")
    if os.path.exists(folded):
        os.remove(folded)
    warmup = 1.0

    def spy_cmd(pid: int) -> list[str]:
        # Starts sampling at once: covers the warm-up and the window (the warm-up is the same load).
        # --native cannot sample without pausing the process; otherwise do not pause it.
        return [py_spy, "record", "--native" if args.native else "--nonblocking", "-f", "raw",
                "-r", str(args.rate), "-o", folded, "-d", str(int(warmup + args.duration)), "-p", str(pid)]

    if args.reference:
        proc, address = ref_backend.start()
        try:
            r = run_async(lambda: _load(address, args.rpc, warmup, args.duration, proc.pid, spy_cmd(proc.pid)))
        finally:
            ref_backend.stop(proc)
    else:
        with testing.redis_server() as url:
            server = testing.start_server(url)
            try:
                r = run_async(lambda: _load(server.address, args.rpc, warmup, args.duration, server.pid,
                                            spy_cmd(server.pid)))
            finally:
                server.stop()
    log(f"{tag}: {r['calls_per_s']:.0f} calls/s, server {r['server_cpu_ms_per_call']:.3f} CPU-ms/call under py-spy")
    print(top_functions(folded, args.top))
    print(breakdown(folded))
    print(f"folded stacks: {folded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
