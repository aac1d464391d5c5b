"""Helpers of the end-to-end tests (no fixtures; those live in conftest.py)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import redis
from durabletask import client, worker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs

from benchmarks import ref_backend
from scheduler.store.keys import HubKeys, partition_of


def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.01, what: str = "condition"):
    """Call ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def scrape_counter(metrics_port: int, name: str, hub: str) -> float:
    """Sum of the samples of ``name`` labelled with ``hub`` on one replica's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    label = f'hub="{hub}"'
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line.split("}", 1)[0]:
            total += float(line.rsplit(" ", 1)[1])
    return total


def serve(backend: str, request, replicas) -> str:
    """The address of this service (a server subprocess) or of the reference backend (its own process)."""
    if backend == "ours":
        return replicas.start("--lease-seconds", "3", "--health-ping-seconds", "0.5").address
    reference, address = ref_backend.start()
    request.addfinalizer(lambda: ref_backend.stop(reference))
    return address


@contextlib.contextmanager
def sdk_on(address: str, backend: str, orchestrators, activities, **worker_options):
    """An SDK client, with an SDK worker (made with ``worker_options``) that runs the given functions,
    both on ``address``."""
    w = worker.TaskHubGrpcWorker(host_address=address, **worker_options)
    for fn in orchestrators:
        w.add_orchestrator(fn)
    for fn in activities:
        w.add_activity(fn)
    w.start()
    c = client.TaskHubGrpcClient(host_address=address)
    c.backend, c.address = backend, address
    try:
        yield c
    finally:
        w.stop()
        c.close()


def ours_only(c, why: str) -> None:
    """Skip the reference run of a scenario where the in-memory backend deliberately differs (README)."""
    if c.backend == "reference":
        pytest.skip(f"the in-memory backend {why}")


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def due_ms(at: datetime) -> int:
    """Epoch ms of an aware datetime, rounded up (what the server stores as the due score)."""
    micros = (at - EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000)


@contextlib.contextmanager
def sdk_stub(address: str) -> Iterator[stubs.TaskHubSidecarServiceStub]:
    """The SDK's own generated stub, for fields its OrchestrationState does not expose."""
    channel = grpc.insecure_channel(address)
    try:
        yield stubs.TaskHubSidecarServiceStub(channel)
    finally:
        channel.close()


def get_instance(address: str, instance_id: str) -> pb.GetInstanceResponse:
    with sdk_stub(address) as stub:
        return stub.GetInstance(pb.GetInstanceRequest(instanceId=instance_id, getInputsAndOutputs=True))


# Atomic looks at Redis: server time and set membership read in one script, so that
# "in the ready set" and "it is now T" are observed at the same instant.
_WHERE_IS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('ZSCORE', KEYS[1], ARGV[1]), redis.call('ZSCORE', KEYS[2], ARGV[1])}
"""
_HUB_QUEUES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due, ready, early = 0, 0, 0
for i = 1, #KEYS, 2 do
  due = due + redis.call('ZCARD', KEYS[i])
  ready = ready + redis.call('ZCARD', KEYS[i + 1])
  early = early + redis.call('ZCOUNT', KEYS[i + 1], '(' .. now, '+inf')
end
return {now, due, ready, early}
"""


@dataclass(frozen=True)
class Placement:
    now_ms: int
    due_score: int | None
    ready_score: int | None


@dataclass(frozen=True)
class Queues:
    now_ms: int
    due: int
    ready: int
    ready_in_future: int  # ready entries whose score (= due time) is after now: promoted early


class Probe:
    """Read-only views of one hub's keys."""

    def __init__(self, client: redis.Redis, hub: HubKeys) -> None:
        self.client = client
        self.hub = hub
        self._where_is = client.register_script(_WHERE_IS)
        self._queues = client.register_script(_HUB_QUEUES)

    def where_is(self, instance_id: str) -> Placement:
        pk = self.hub.for_instance(instance_id)
        now, due, ready = self._where_is(keys=[pk.due, pk.ready], args=[instance_id])
        return Placement(int(now), None if due is None else int(float(due)),
                         None if ready is None else int(float(ready)))

    def queues(self) -> Queues:
        keys = [k for pk in self.hub.all_partitions() for k in (pk.due, pk.ready)]
        return Queues(*(int(v) for v in self._queues(keys=keys)))

    def zset(self, which: str) -> dict[str, int]:
        """Every member of the hub's due or ready sets (id -> score), checking each sits in its own partition."""
        members: dict[str, int] = {}
        for p, pk in enumerate(self.hub.all_partitions()):
            for member, score in self.client.zrange(getattr(pk, which), 0, -1, withscores=True):
                iid = member.decode()
                assert partition_of(iid, self.hub.partitions) == p, f"{iid} sits in partition {p} of {which}"
                members[iid] = int(score)
        return members

    def status_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for pk in self.hub.all_partitions():
            for status, count in self.client.hgetall(pk.stats).items():
                total[status.decode()] = total.get(status.decode(), 0) + int(count)
        return {s: n for s, n in total.items() if n}


# -- entities, scheduled tasks and faults (test_entities_sdk.py, test_scheduled_sdk.py, test_entity_faults.py) --

@contextlib.contextmanager
def entity_worker(address: str, *, orchestrators=(), activities=(), entities=(), filters=None,
                  scheduled: bool = False, **worker_options) -> Iterator[worker.TaskHubGrpcWorker]:
    """A started SDK worker on ``address``; ``entities`` holds functions, DurableEntity classes or
    (name, entity) pairs; ``filters`` (a WorkItemFilters) makes it take only what they name;
    ``scheduled`` registers the SDK's schedule entity and orchestrator."""
    w = worker.TaskHubGrpcWorker(host_address=address, **worker_options)
    for fn in orchestrators:
        w.add_orchestrator(fn)
    for fn in activities:
        w.add_activity(fn)
    for entry in entities:
        name, fn = entry if isinstance(entry, tuple) else (None, entry)
        w.add_entity(fn, name)
    if scheduled:
        w.configure_scheduled_tasks()
    if filters is not None:
        w.use_work_item_filters(filters)
    w.start()
    try:
        yield w
    finally:
        w.stop()


@contextlib.contextmanager
def sdk_entities_on(address: str, backend: str, **worker_kwargs) -> Iterator[client.TaskHubGrpcClient]:
    """Like :func:`sdk_on`, with entities (see :func:`entity_worker` for the arguments)."""
    with entity_worker(address, **worker_kwargs):
        c = client.TaskHubGrpcClient(host_address=address)
        c.backend, c.address = backend, address
        try:
            yield c
        finally:
            c.close()


def stays(predicate: Callable[[], object], seconds: float, interval: float = 0.02, what: str = "condition") -> None:
    """Fail the test if ``predicate`` turns falsy at any check within ``seconds`` (for what must NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            pytest.fail(f"{what} stopped holding before {seconds}s had passed")
        time.sleep(interval)


class TcpProxy:
    """A loopback TCP forwarder whose target can be switched: a worker connected through it reconnects
    to another replica once the one it used is gone (as through a Kubernetes Service)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def retarget(self, target: str) -> None:
        """New connections go to ``target``; the open ones are cut."""
        self.target = target
        for conn in self._conns:
            _cut(conn)
        self._conns.clear()

    def close(self) -> None:
        self._closed = True
        _cut(self._listener)
        self.retarget(self.target)

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=2)
                upstream.settimeout(None)
            except OSError:
                _cut(downstream)
                continue
            self._conns += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _cut(src)
            _cut(dst)


def _cut(conn: socket.socket) -> None:
    """Shut a socket down, then close it. ``close`` alone sends no FIN while another thread is blocked in
    ``recv`` on it: the peer would see a silent connection until its keepalive gives up."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()


def scrape_samples(metrics_port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on one replica's /metrics page whose labels include ``labels``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line.split("}", 1)[0] for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total
