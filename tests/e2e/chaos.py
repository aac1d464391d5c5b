"""Chaos machinery: one redis-server with AOF (``appendfsync always``) on a fixed port, replicas
(``scheduler serve`` subprocesses, each reached through a TCP proxy of its own whose address stays, as a
Kubernetes Service's would, while the replica behind it is killed and started again on a new port) and
SDK worker processes (``chaos_app.py``), with the actions a chaos monkey takes on them: SIGKILL a worker
and start another, SIGKILL a replica and start it again, stop Redis and start it again on its port with
its data kept.

Used by the soak driver (``chaos_soak.py``, run by ``test_chaos_soak.py`` and as a script by
``python -m benchmarks --only chaos``); nothing here imports our generated protobuf module.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import redis

from e2e_helpers import TcpProxy
from scheduler.testing import ServerProcess, start_server

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "chaos_app.py")
SERVER_ARGS = ("--lease-seconds", "3", "--health-ping-seconds", "0.5")


class AofRedis:
    """A redis-server of our own on a fixed free port, every write fsynced to its AOF before the reply."""

    def __init__(self, workdir: str) -> None:
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = _port_below_ephemeral()  # so no outgoing connection takes it while Redis is down
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self, timeout: float = 20.0) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:  # PING answers only once the AOF is loaded
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not come up (see {self.dir}/redis.log)")
            time.sleep(0.05)
        client.close()

    def stop(self, how: str = "term") -> None:
        """``term``: SIGTERM (Redis flushes its AOF and exits); ``kill``: SIGKILL (nothing acknowledged is lost
        either, with ``appendfsync always``)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
            self.proc.wait(30)


def _port_below_ephemeral() -> int:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below the ephemeral range")


class Replica:
    """A ``scheduler serve`` subprocess behind a TCP proxy whose ``address`` stays when it is restarted."""

    def __init__(self, redis_url: str, common: list[str], log_path: str) -> None:
        self.redis_url, self.common, self.log_path = redis_url, common, log_path
        self.server: ServerProcess | None = None
        self.proxy: TcpProxy | None = None

    @property
    def address(self) -> str:
        return self.proxy.address

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.server = start_server(self.redis_url, *self.common, stderr=log)
        if self.proxy is None:
            self.proxy = TcpProxy(self.server.address)
        else:
            self.proxy.retarget(self.server.address)

    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None


class Worker:
    """An SDK worker process (``chaos_app.py``) connected to one replica's address."""

    def __init__(self, address: str, log_path: str) -> None:
        self.address = address
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen([sys.executable, APP, address], stdout=subprocess.PIPE, stderr=log,
                                         text=True, cwd=HERE)
        line = self.proc.stdout.readline().strip()
        if line != "WORKER READY":
            raise RuntimeError(f"worker did not start ({line!r}), see {log_path}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@dataclass
class Chaos:
    """What the monkey did: counts and a timeline (seconds since the soak started, UTC time, action)."""
    worker_kills: int = 0
    replica_kills: int = 0
    redis_restarts: int = 0
    errors: list[str] = field(default_factory=list)  # actions that could not be carried out
    timeline: list[tuple[float, str, str]] = field(default_factory=list)


class Cluster:
    """Redis, replicas and workers of one soak; :meth:`close` ends every process it started."""

    def __init__(self, workdir: str, replicas: int, workers: int, prefix: str, hub: str, seed: int) -> None:
        self.workdir = workdir
        self.redis = AofRedis(workdir)
        self.redis.start()
        common = ["--key-prefix", prefix, "--task-hub", hub, "--partitions", "4", *SERVER_ARGS]
        self.replicas = [Replica(self.redis.url, common, os.path.join(workdir, f"replica-{i}.log"))
                         for i in range(replicas)]
        for replica in self.replicas:
            replica.start()
        self.workers: list[Worker] = []
        self.rng = random.Random(seed)
        self.chaos = Chaos()
        self.t0 = time.monotonic()
        self._worker_logs = 0
        for i in range(workers):
            self.add_worker(self.replicas[i % replicas].address)

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def add_worker(self, address: str) -> None:
        self._worker_logs += 1
        self.workers.append(Worker(address, os.path.join(self.workdir, f"worker-{self._worker_logs}.log")))

    def _note(self, what: str) -> None:
        now = time.time()
        utc = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        self.chaos.timeline.append((round(time.monotonic() - self.t0, 1), utc, what))

    def kill_worker(self) -> None:
        victim = self.rng.choice(self.workers)
        victim.kill()
        self.workers.remove(victim)
        self.chaos.worker_kills += 1
        address = self.rng.choice(self.addresses)
        self._note(f"SIGKILL worker pid {victim.proc.pid} (on {victim.address}); a new one on {address}")
        self.add_worker(address)

    def kill_replica(self, down: float = 1.0) -> None:
        victim = self.rng.choice(self.replicas)
        pid = victim.server.pid
        victim.server.kill()
        self.chaos.replica_kills += 1
        self._note(f"SIGKILL replica pid {pid} ({victim.address})")
        time.sleep(down)
        victim.start()
        self._note(f"replica {victim.address} started again (pid {victim.server.pid} on {victim.server.address})")

    def restart_redis(self, down: float = 1.5) -> None:
        how = ("term", "kill")[self.chaos.redis_restarts % 2]
        self.redis.stop(how)
        self.chaos.redis_restarts += 1
        self._note(f"Redis stopped (SIG{how.upper()})")
        time.sleep(down)
        self.redis.start()
        self._note("Redis started again on its port with its AOF")

    def run_plan(self, plan: list[str], seconds: float, stop: threading.Event) -> None:
        """Take the actions of ``plan`` ("worker", "replica", "redis") spread evenly over ``seconds``."""
        actions = {"worker": self.kill_worker, "replica": self.kill_replica, "redis": self.restart_redis}
        gap = seconds / (len(plan) + 1)
        for action in plan:
            if stop.wait(gap * self.rng.uniform(0.6, 1.4)):
                return
            try:
                actions[action]()
            except Exception as exc:  # noqa: BLE001 - said in the report; the soak goes on
                self.chaos.errors.append(f"{action}: {exc!r}")
                self._note(f"{action} failed: {exc!r}")

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        for r in self.replicas:
            if r.alive():
                r.server.stop(8.0)
            if r.proxy:
                r.proxy.close()
        self.redis.stop("term")


def plan(worker_kills: int, replica_kills: int, redis_restarts: int, seed: int) -> list[str]:
    """The chaos actions in a shuffled order (a Redis restart never first, so some work is under way)."""
    actions = ["worker"] * worker_kills + ["replica"] * replica_kills + ["redis"] * redis_restarts
    random.Random(seed).shuffle(actions)
    if actions and actions[0] == "redis" and len(actions) > 1:
        actions[0], actions[1] = actions[1], actions[0]
    return actions
