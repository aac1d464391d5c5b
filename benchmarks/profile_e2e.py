"""Where does each CPU-ms of an orchestration go in our server? py-spy through an e2e burst.

    python -m benchmarks.profile_e2e [--count 2000] [--rate 100]

Starts a fresh redis-server, our server and the SDK worker (``e2e_driver.py worker``), runs a burst of
COUNT one-activity orchestrations (``e2e_driver.py burst``) while ``py-spy record --native`` samples the
server, and prints the server's CPU-ms per orchestration (utime+stime from /proc, and redis-server's
``INFO cpu``) split by where the samples were: gRPC (its C core and Cython layer), the event loop
(uvloop/asyncio), protobuf, the Redis client (hiredis, redis-py, store/pipelining.py), system calls
(socket writes and reads, named by who made them) and our own code. A sample belongs to the innermost
frame that names a part; samples in epoll waits are idle and left out. py-spy pauses the process to
read native stacks, so the burst runs slower than unprofiled: the split is what matters, not the time.
Folded stacks go to ``benchmarks/results/profile-e2e.txt``.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time

from scheduler import testing

from . import e2e
from .common import proc_cpu_seconds, redis_client, redis_cpu_seconds, run_async
from .profile_server import layer_of

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SYSCALLS = ("write (", "sendmsg (", "recv (", "read (", "recvmsg (", "syscall (")


def split(folded_path: str) -> tuple[int, collections.Counter[str], int]:
    """(busy samples, samples per layer as profile_server.layer_of counts them, busy samples whose leaf is a
    socket system call) of py-spy's raw (folded) output."""
    layers: collections.Counter[str] = collections.Counter()
    syscalls = 0
    with open(folded_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if n.isdigit():
                frames = [frame for frame in stack.split(";") if frame]
                layer = layer_of(frames)
                if layer != "idle":
                    layers[layer] += int(n)
                    syscalls += int(n) if frames[-1].startswith(SYSCALLS) else 0
    return sum(layers.values()), layers, syscalls


def _redis_cpu(url: str) -> float:
    async def read() -> float:
        redis = redis_client(url)
        try:
            return await redis_cpu_seconds(redis)
        finally:
            await redis.aclose()

    return run_async(read)


def profile(count: int, rate: int, folded: str) -> dict:
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    with testing.redis_server() as url:
        server = testing.start_server(url)
        worker = e2e._driver("worker", server.address)
        burst = None
        try:
            e2e._expect(worker, "READY", "worker")
            burst = e2e._driver("burst", server.address, count, "profile")
            e2e._expect(burst, "READY", "burst")
            spy = subprocess.Popen([py_spy, "record", "--native", "-r", str(rate), "-f", "raw", "-o", folded,
                                    "-p", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attached
            cpu0, redis0 = proc_cpu_seconds(server.pid), _redis_cpu(url)
            burst.stdin.write("\n")
            burst.stdin.flush()
            e2e._expect(burst, "DONE", "burst")
            cpu1, redis1 = proc_cpu_seconds(server.pid), _redis_cpu(url)
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait(30)
        finally:
            if burst is not None:
                e2e._stop(burst)
            e2e._stop(worker)
            server.stop()
    return {"server_ms": 1000 * (cpu1 - cpu0) / count, "redis_ms": 1000 * (redis1 - redis0) / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="orchestrations in the burst")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    args = parser.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    folded = os.path.join(RESULTS, "profile-e2e.txt")
    cpu = profile(args.count, args.rate, folded)
    busy, layers, syscalls = split(folded)
    print(f"server CPU per orchestration (under py-spy): {cpu['server_ms']:.3f} ms; "
          f"redis-server {cpu['redis_ms']:.3f} ms; {busy} busy samples, {syscalls / busy:.0%} of them in socket "
          "system calls")
    print("| layer | share | CPU-ms per orchestration |\n|---|---|---|")
    for layer, n in layers.most_common():
        print(f"| {layer} | {n / busy:.0%} | {cpu['server_ms'] * n / busy:.2f} |")
    print(f"folded stacks: {folded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
