"""Fixtures of the end-to-end layer: the official SDK against ``scheduler serve`` subprocesses.

Nothing here may import ``scheduler._proto`` (or a module that imports it): the SDK's
generated module defines the same unqualified protobuf symbols, and both cannot live in
one process. ``scheduler.testing`` and ``scheduler.store.keys`` are free of it.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import redis

from e2e_helpers import Probe
from scheduler.store.keys import HubKeys
from scheduler.testing import ServerProcess, free_port, start_server

PARTITIONS = 4
STOP_TIMEOUT = 8.0


@pytest.fixture(autouse=True)
def _no_scheduler_proto_in_this_process():
    """Guard: the SDK's protobuf symbols and ours cannot share one interpreter."""
    yield
    assert "scheduler._proto.orchestrator_service_pb2" not in sys.modules, \
        "an e2e test imported scheduler._proto; run the server in a subprocess instead"


@pytest.fixture
def hub_keys(key_prefix: str, hub_name: str) -> HubKeys:
    return HubKeys(key_prefix, hub_name, PARTITIONS)


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at the keys the servers write (never to change them)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def probe(rds: redis.Redis, hub_keys: HubKeys) -> Probe:
    return Probe(rds, hub_keys)


class Replicas:
    """Starts ``scheduler serve`` subprocesses on one Redis, prefix and hub; stops them all at teardown."""

    def __init__(self, redis_url: str, key_prefix: str, hub_name: str) -> None:
        self.redis_url = redis_url
        self.common = ["--key-prefix", key_prefix, "--task-hub", hub_name, "--partitions", str(PARTITIONS)]
        self.started: list[ServerProcess] = []
        self.metrics_ports: dict[int, int] = {}  # pid -> metrics port

    def start(self, *extra: str, metrics: bool = False, env: dict[str, str] | None = None) -> ServerProcess:
        args = [*self.common, *extra]
        port = None
        if metrics:
            port = free_port()
            args += ["--metrics-port", str(port)]
        server = start_server(self.redis_url, *args, env=env)
        self.started.append(server)
        if port is not None:
            self.metrics_ports[server.pid] = port
        return server

    def metrics_port(self, server: ServerProcess) -> int:
        return self.metrics_ports[server.pid]

    def stop_all(self) -> list[str]:
        """SIGTERM every replica still running; returns those that did not exit cleanly."""
        problems = []
        for server in self.started:
            if server.proc.poll() is not None:  # killed or stopped by the test itself
                continue
            code = server.stop(STOP_TIMEOUT)
            if code != 0:
                problems.append(f"replica pid {server.pid} ended with code {code} after SIGTERM "
                                f"(-9: it did not exit within {STOP_TIMEOUT}s and was killed)")
        return problems


@pytest.fixture
def replicas(redis_url: str, key_prefix: str, hub_name: str) -> Iterator[Replicas]:
    group = Replicas(redis_url, key_prefix, hub_name)
    yield group
    problems = group.stop_all()
    assert not problems, problems


@pytest.fixture
def server(replicas: Replicas) -> ServerProcess:
    """One replica (4 partitions, this test's prefix and hub)."""
    return replicas.start()
