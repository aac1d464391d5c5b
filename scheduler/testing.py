"""Run the service and a throwaway redis-server as subprocesses (tests and benchmarks).

Needs the ``test`` extra (pytest-redis) for :func:`redis_server`.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .logs import ready_addresses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_executor(port: int, datadir: str):
    """pytest-redis' RedisExecutor for a redis-server on 127.0.0.1:``port`` (started by ``start()``, which may be
    called again after ``stop()``: same port, same data), started without Python code between fork and exec.
    mirakuru starts it with ``preexec_fn=os.setsid``, Python code that runs in the forked child of a process full
    of gRPC and event-loop threads, where it may crash (seen: a segmentation fault in the child, so Redis never
    came back); ``start_new_session`` does the same setsid in C."""
    import pathlib

    from pytest_redis.executor import RedisExecutor

    class ForkSafeRedisExecutor(RedisExecutor):
        @property
        def _popen_kwargs(self) -> dict:
            kwargs = super()._popen_kwargs
            if kwargs.pop("preexec_fn", None) is not None:
                kwargs["start_new_session"] = True
            return kwargs

    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    return ForkSafeRedisExecutor(executable, databases=4, redis_timeout=30, loglevel="warning", host="127.0.0.1",
                                 port=port, datadir=pathlib.Path(datadir))


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A fresh redis-server bound to 127.0.0.1 on a free port; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="dt-redis-") as datadir:
        executor = redis_executor(port or free_port(), datadir)
        executor.start()
        try:
            yield f"redis://127.0.0.1:{executor.port}/0"
        finally:
            executor.stop()


def _free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too; both must stay below 65536."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


@contextlib.contextmanager
def redis_cluster(nodes: int = 3, startup_timeout: float = 20.0) -> Iterator[str]:
    """A throwaway Redis Cluster of ``nodes`` primaries (1, or 3 and more) on free ports; yields a URL of one node."""
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    ports: list[int] = []
    while len(ports) < nodes:
        port = _free_cluster_port()
        if port not in ports:
            ports.append(port)
    with tempfile.TemporaryDirectory(prefix="dt-cluster-") as workdir:
        procs = [subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"{workdir}/nodes-{port}.conf", "--dir", workdir,
             "--save", "", "--appendonly", "no", "--logfile", f"{workdir}/{port}.log"])
            for port in ports]
        try:
            deadline = time.monotonic() + startup_timeout
            for port in ports:
                while subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node on port {port} did not start")
                    time.sleep(0.05)
            if nodes == 1:  # redis-cli --cluster create wants three masters: one node takes every slot itself
                subprocess.run([cli, "-p", str(ports[0]), "cluster", "addslotsrange", "0", "16383"], check=True,
                               capture_output=True)
            else:
                subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas",
                                "0", "--cluster-yes"], check=True, capture_output=True)
            while "cluster_state:ok" not in subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"],
                                                           capture_output=True, text=True).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach state ok")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{ports[0]}/0"
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


@dataclass
class ServerProcess:
    """A ``dt-scheduler serve`` subprocess."""

    proc: subprocess.Popen
    address: str  # host:port
    dapr_address: str | None = None  # host:port of --dapr-port, when served

    @property
    def pid(self) -> int:
        return self.proc.pid

    def server_processes(self) -> list[int]:
        """With ``--processes N``: the pids of the N server processes its supervisor started (not
        multiprocessing's resource tracker); with one process, none."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children", encoding="ascii") as f:
            children = [int(pid) for pid in f.read().split()]
        return [pid for pid in children if b"spawn_main" in _cmdline(pid)]

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:  # it ended meanwhile
        return b""


def start_server(redis_url: str | None, *extra_args: str, env: dict[str, str] | None = None,
                 startup_timeout: float = 30.0, log_level: str = "WARNING", stderr=None) -> ServerProcess:
    """Start ``python -m scheduler serve`` on a free port and wait for its READY line (with
    ``--processes N``, the supervisor's, once every process serves). ``stderr``: where its log goes
    (a file; default: this process's stderr)."""
    args = [sys.executable, "-m", "scheduler", "serve", "--host", "127.0.0.1", "--port", "0",
            "--log-level", log_level, *extra_args]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + startup_timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited before it was ready (code {proc.wait()})")
        addresses = ready_addresses(line)  # "READY host:port [dapr host:port]", or its JSON object
        if addresses is not None:
            return ServerProcess(proc, *addresses)
    proc.kill()
    raise RuntimeError(f"server not ready within {startup_timeout}s")
