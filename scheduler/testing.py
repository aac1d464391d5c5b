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
    with redis_cluster_nodes(nodes, 0, startup_timeout, node_timeout_ms=15000) as cluster:
        yield cluster.url


@dataclass
class ClusterTopology:
    """A Redis Cluster the tests started: its nodes by port (which are masters changes on failover)."""

    url: str
    nodes: dict[int, RedisNode]

    def masters(self) -> list[int]:
        """The ports of the masters that answer, as the first node that answers says."""
        for port, node in self.nodes.items():
            if node.proc is None or node.proc.poll() is not None:
                continue
            text = _redis_cli(port, "cluster", "nodes")
            if text:  # a master another node suspects (fail?) or knows has failed is not counted
                return sorted(int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in text.splitlines()
                              if "master" in line.split()[2] and "fail" not in line.split()[2])
        return []

    def kill_master(self) -> int:
        """SIGKILL one master (the one with the lowest port); returns its port."""
        port = self.masters()[0]
        self.nodes[port].kill()
        return port

    def wait_for_failover(self, old_port: int, masters: int, timeout: float = 30.0) -> None:
        """Wait until a replica has taken over from the master on ``old_port`` (it is no master any more)
        and the Cluster is ok again."""
        _wait_until(lambda: old_port not in self.masters() and len(self.masters()) == masters,
                    f"no replica took over from {old_port}", timeout)
        self.wait_until_ok(masters, timeout)

    def wait_until_ok(self, masters: int, timeout: float = 30.0) -> None:
        """Wait until ``masters`` masters answer and every node that runs says cluster_state:ok."""
        def ok() -> bool:
            alive = [p for p, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]
            return len(self.masters()) == masters and all(
                "cluster_state:ok" in _redis_cli(p, "cluster", "info") for p in alive)
        _wait_until(ok, "the Redis Cluster did not reach state ok", timeout)


@contextlib.contextmanager
def redis_cluster_nodes(masters: int = 3, replicas: int = 0, startup_timeout: float = 20.0,
                        node_timeout_ms: int = 1000) -> Iterator[ClusterTopology]:
    """A throwaway Redis Cluster of ``masters`` primaries, each with ``replicas`` replicas, on free ports
    (a replica takes over ~``node_timeout_ms`` after its master stops answering). A killed node started
    again (``nodes[port].start()``) rejoins with its nodes.conf, as a replica if it was failed over."""
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    ports: list[int] = []
    while len(ports) < masters * (1 + replicas):
        port = _free_cluster_port()
        if port not in ports:
            ports.append(port)
    with tempfile.TemporaryDirectory(prefix="dt-cluster-") as workdir:
        nodes = {port: RedisNode(port, [
            executable, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", f"{workdir}/nodes-{port}.conf", "--dir", workdir,
            "--dbfilename", f"dump-{port}.rdb", "--cluster-node-timeout", str(node_timeout_ms),
            "--save", "", "--appendonly", "no", "--logfile", f"{workdir}/{port}.log"]) for port in ports}
        topology = ClusterTopology(f"redis://127.0.0.1:{ports[0]}/0", nodes)
        try:
            for node in nodes.values():
                node.start()
            for port in ports:
                _wait_until(lambda p=port: _redis_cli(p, "ping") == "PONG", f"cluster node on port {port} did not "
                            f"start", startup_timeout)
            if masters == 1 and not replicas:  # redis-cli --cluster create wants three masters: one takes every slot
                subprocess.run([cli, "-p", str(ports[0]), "cluster", "addslotsrange", "0", "16383"], check=True,
                               capture_output=True)
            else:
                subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas",
                                str(replicas), "--cluster-yes"], check=True, capture_output=True)
            topology.wait_until_ok(masters, startup_timeout)
            if replicas:
                def synced() -> bool:
                    return all("master_link_status:up" in _redis_cli(p, "info", "replication")
                               for p in ports if p not in topology.masters())
                _wait_until(synced, "the Cluster's replicas did not sync", startup_timeout)
            yield topology
        finally:
            for node in nodes.values():
                node.stop()


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


@dataclass
class RedisNode:
    """One redis-server (or Sentinel) subprocess the tests started, on 127.0.0.1:``port``."""

    port: int
    args: list[str]
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: Redis gets no chance to save or to tell its replicas."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _redis_cli(port: int, *command: str) -> str:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    # (the password of a test's topology, if any, from the environment: not on the command line)
    env = {**os.environ, "REDISCLI_AUTH": _CLI_AUTH[port]} if port in _CLI_AUTH else None
    return subprocess.run([cli, "-p", str(port), "--no-auth-warning", *command], capture_output=True, text=True,
                          timeout=10, env=env).stdout.strip()


_CLI_AUTH: dict[int, str] = {}  # port -> password of the topologies that have one


def _wait_until(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:g} s")
        time.sleep(0.05)


@dataclass
class SentinelTopology:
    """A primary, its replicas and three Sentinels that monitor it as ``master`` (all on 127.0.0.1)."""

    master: str
    servers: dict[int, RedisNode]  # by port: the primary and its replicas (which is which changes on failover)
    sentinels: list[RedisNode]

    @property
    def sentinel_addresses(self) -> str:
        """The value of --redis-sentinels."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def primary_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers says."""
        for node in self.sentinels:
            reply = _redis_cli(node.port, "sentinel", "get-master-addr-by-name", self.master).split()
            if len(reply) == 2:
                return int(reply[1])
        return None

    def kill_primary(self) -> int:
        """SIGKILL the current primary; returns its port."""
        port = self.primary_port()
        self.servers[port].kill()
        return port

    def restart_as_replica(self, port: int) -> None:
        """Start the server on ``port`` again as a replica of the current primary (as a StatefulSet's
        start script that asks the Sentinels does; left to itself, a returning old primary is made a
        replica by the Sentinels only after ~10-20 s)."""
        node = self.servers[port]
        primary = self.primary_port()
        if "--replicaof" in node.args:
            i = node.args.index("--replicaof")
            del node.args[i:i + 3]
        node.args += ["--replicaof", "127.0.0.1", str(primary)]
        node.start()

    def wait_for_new_primary(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the Sentinels name another primary and it says it is one; returns its port."""
        def switched() -> bool:
            port = self.primary_port()
            return port is not None and port != old_port and _redis_cli(port, "role").startswith("master")
        _wait_until(switched, "the Sentinels did not fail over", timeout)
        return self.primary_port()

    def wait_for_replicas(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the primary has ``count`` replicas in sync (connected_slaves with state online)."""
        def synced() -> bool:
            port = self.primary_port()
            info = _redis_cli(port, "info", "replication") if port else ""
            return sum("state=online" in line for line in info.splitlines() if line.startswith("slave")) >= count
        _wait_until(synced, f"the primary did not get {count} replica(s) in sync", timeout)


@contextlib.contextmanager
def redis_sentinels(replicas: int = 1, down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                    master: str = "dtmaster", password: str | None = None,
                    sentinel_password: str | None = None) -> Iterator[SentinelTopology]:
    """A throwaway primary with ``replicas`` replicas and three Sentinels (Debian's ``redis-server
    --sentinel``), on free ports; a replica is promoted ~``down_after_ms`` after the primary stops
    answering. Killed servers stay down until a test starts them again (``servers[port].start()``: the
    Sentinels make a returning old primary a replica of the new one). ``password``: the servers require it
    (and the replicas and Sentinels use it); ``sentinel_password``: the Sentinels require it."""
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="dt-sentinel-") as workdir:
        ports = [free_port() for _ in range(1 + replicas)]
        servers = {}
        for i, port in enumerate(ports):
            args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
                    "--dbfilename", f"dump-{port}.rdb", "--save", "", "--appendonly", "no",
                    "--logfile", f"{workdir}/redis-{port}.log"]
            if password:
                args += ["--requirepass", password, "--masterauth", password]
            if i:
                args += ["--replicaof", "127.0.0.1", str(ports[0])]
            servers[port] = RedisNode(port, args)
        sentinels = []
        for _ in range(3):
            port = free_port()
            conf = f"{workdir}/sentinel-{port}.conf"
            with open(conf, "w", encoding="ascii") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir}/sentinel-{port}.log\n"
                        f"sentinel monitor {master} 127.0.0.1 {ports[0]} 2\n"
                        f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                        f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
                        f"sentinel parallel-syncs {master} 1\n"
                        + (f"sentinel auth-pass {master} {password}\n" if password else "")
                        + (f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
                           if sentinel_password else ""))
            sentinels.append(RedisNode(port, [executable, conf, "--sentinel"]))
        topology = SentinelTopology(master, servers, sentinels)
        _CLI_AUTH.update({port: password for port in servers if password})
        _CLI_AUTH.update({node.port: sentinel_password for node in sentinels if sentinel_password})
        try:
            for node in [*servers.values(), *sentinels]:
                node.start()
            for node in [*servers.values(), *sentinels]:
                _wait_until(lambda n=node: _redis_cli(n.port, "ping") == "PONG", f"port {node.port} did not answer", 20)
            topology.wait_for_replicas(replicas)

            def all_seen() -> bool:  # each Sentinel knows the two others (a failover needs a quorum of 2)
                return all("num-other-sentinels\n2" in _redis_cli(s.port, "sentinel", "master", master)
                           for s in sentinels)
            _wait_until(all_seen, "the Sentinels did not find each other", 20)
            yield topology
        finally:
            for node in [*sentinels, *servers.values()]:
                node.stop()
