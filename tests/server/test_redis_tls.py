"""A Redis that speaks only TLS, requires client certificates and a password: every connection the
service makes to it (the redis-py pool, the pipelined request connection, the pub/sub wake-ups, the
health check) goes through TLS with the URL's options, and the password shows nowhere."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certs import Certs, Pair, certs  # noqa: F401 - certs is a fixture
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.engine import waiters as waiters_module
from scheduler.testing import free_port
from server_helpers import PARTITIONS, eventually, rpc_error, snapshot

PASSWORD = "s3cret"


def tls_url(port: int, ca: Pair, client: Pair, password: str | None = PASSWORD, in_query: bool = False) -> str:
    """``in_query``: the password as the URL's password= option rather than in its user info."""
    options = {"ssl_ca_certs": str(ca.cert), "ssl_certfile": str(client.cert), "ssl_keyfile": str(client.key)}
    if password and in_query:
        options["password"] = password
    auth = f":{password}@" if password and not in_query else ""
    return f"rediss://{auth}localhost:{port}/0?{urlencode(options)}"


@contextlib.contextmanager
def tls_redis_server(certs: Certs, datadir, password: str | None) -> Iterator[int]:
    """A redis-server of the test's own: TLS only, client certificates of the CA required, and the
    password if one is given; yields its TLS port, stops it by pid."""
    port = free_port()
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    logfile = datadir / "redis.log"
    args = [executable, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key),
            "--tls-ca-cert-file", str(certs.ca.cert), "--tls-auth-clients", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(datadir), "--logfile", str(logfile)]
    if password is not None:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = redis.Redis.from_url(tls_url(port, certs.ca, certs.client, password), socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, \
                f"redis-server exited with {proc.returncode}: {logfile.read_text() if logfile.exists() else ''}"
            try:
                if probe.ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the TLS redis-server did not answer"
            time.sleep(0.05)
        probe.close()
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.fixture(scope="module")
def tls_redis_port(certs, tmp_path_factory) -> Iterator[int]:
    """TLS, client certificates and the password PASSWORD."""
    with tls_redis_server(certs, tmp_path_factory.mktemp("tls-redis"), PASSWORD) as port:
        yield port


@pytest.fixture(scope="module")
def open_tls_redis_port(certs, tmp_path_factory) -> Iterator[int]:
    """TLS and client certificates, no password."""
    with tls_redis_server(certs, tmp_path_factory.mktemp("tls-redis-open"), None) as port:
        yield port


@pytest.fixture
def url(tls_redis_port, certs) -> str:
    return tls_url(tls_redis_port, certs.ca, certs.client)


@pytest.fixture
def wrong_ca_url(tls_redis_port, certs) -> str:
    """The right client certificate, but the other CA to check the server's certificate with."""
    return tls_url(tls_redis_port, certs.other_ca, certs.client)


@pytest.fixture
async def tls_client(url) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own, to look at what the server wrote."""
    client = aioredis.Redis.from_url(url)
    yield client
    await client.aclose()


@pytest.fixture(params=["no password", "password", "?password="])
def any_url(request, certs) -> str:
    """The URL of the Redis without a password, then of the one with PASSWORD (in the user info, then
    as the password= option)."""
    if request.param != "no password":
        return tls_url(request.getfixturevalue("tls_redis_port"), certs.ca, certs.client,
                       in_query=request.param == "?password=")
    return tls_url(request.getfixturevalue("open_tls_redis_port"), certs.ca, certs.client, password=None)


@pytest.mark.parametrize("password", [PASSWORD, None], ids=["password", "no password"])
def test_the_redis_servers_really_require_tls_and_a_client_certificate(request, certs, password):
    """The ground the other tests stand on: none of these connects."""
    port = request.getfixturevalue("tls_redis_port" if password else "open_tls_redis_port")
    once = dict(socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    plain = redis.Redis(host="localhost", port=port, password=password, **once)
    no_cert = redis.Redis(host="localhost", port=port, password=password, ssl=True, ssl_ca_certs=str(certs.ca.cert),
                          **once)
    other_cert = redis.Redis.from_url(tls_url(port, certs.ca, certs.other_client, password), **once)
    for client in (plain, no_cert, other_cert):
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        client.close()
    good = redis.Redis.from_url(tls_url(port, certs.ca, certs.client, password))
    assert good.ping()
    good.close()
    if password:
        no_password = redis.Redis.from_url(tls_url(port, certs.ca, certs.client, password=None))
        with pytest.raises(redis.exceptions.AuthenticationError):
            no_password.ping()
        no_password.close()


async def readiness(app) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        return (await health.Check(health_pb2.HealthCheckRequest(service="readiness"))).status


async def test_every_connection_path_works_over_tls(start_app, any_url, key_prefix, hub_name, caplog, monkeypatch):
    # A waiter re-reads the instance on its own only after this long: within the test, only a wake-up
    # published through Redis pub/sub can answer a waiter on another replica.
    monkeypatch.setattr(waiters_module, "RECHECK_SECONDS", 120.0)
    caplog.set_level("DEBUG")
    common = dict(redis_url=any_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    first = await start_app(**common)
    second = await start_app(**common)
    for app in (first, second):  # Store.ping: the pipelined connection and the pool
        await eventually(lambda app=app: _is(readiness(app), health_pb2.HealthCheckResponse.SERVING))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as ch1, \
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as ch2:
        stub1, stub2 = pb_grpc.TaskHubSidecarServiceStub(ch1), pb_grpc.TaskHubSidecarServiceStub(ch2)
        await stub1.StartInstance(pb.CreateInstanceRequest(instanceId="tls-1", name="Orch"))
        reply = await stub1.GetInstance(pb.GetInstanceRequest(instanceId="tls-1"))
        assert reply.exists and reply.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_PENDING
        async with aioredis.Redis.from_url(any_url) as own:  # it is in this Redis
            assert any(k.endswith(":inst:tls-1") for k in await _prefix_keys(own, key_prefix))

        waiter = asyncio.ensure_future(stub1.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="tls-1"),
                                                                       timeout=60))
        await eventually(lambda: _true((hub_name, "tls-1") in first.engine.waiters._waiting))

        stream = stub2.GetWorkItems(pb.GetWorkItemsRequest())
        try:
            item = await _next_work(stream)
            assert item.orchestratorRequest.instanceId == "tls-1"
            await stub2.CompleteOrchestratorTask(_done(item.completionToken))
        finally:
            stream.cancel()
        answered = await asyncio.wait_for(waiter, 10)  # woken by the pub/sub wake-up, not the 120 s re-read
        assert answered.exists
        assert answered.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    assert PASSWORD not in caplog.text


async def test_a_wrong_ca_is_not_ready_and_unavailable_and_says_no_password(start_app, wrong_ca_url, key_prefix,
                                                                            hub_name, tls_client, caplog):
    caplog.set_level("DEBUG")
    app = await start_app(redis_url=wrong_ca_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    assert await readiness(app) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        liveness = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert liveness.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        details = [await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="never", name="Orch")),
                                   grpc.StatusCode.UNAVAILABLE),
                   await rpc_error(stub.GetInstance(pb.GetInstanceRequest(instanceId="never")),
                                   grpc.StatusCode.UNAVAILABLE)]
    assert not any(PASSWORD in d for d in details), details
    assert await snapshot(tls_client, key_prefix) == {}  # nothing reached the Redis
    assert PASSWORD not in caplog.text
    assert "Redis" in caplog.text  # it did say something about Redis


@pytest.mark.parametrize("which", ["right CA", "wrong CA"])
def test_the_startup_line_and_the_log_never_show_the_password(which, url, wrong_ca_url, key_prefix, hub_name,
                                                              tmp_path):
    redis_url = url if which == "right CA" else wrong_ca_url
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--host", "127.0.0.1", "--port", "0",
                                 "--log-level", "INFO", "--redis-url", redis_url, "--key-prefix", key_prefix,
                                 "--task-hub", hub_name, "--partitions", str(PARTITIONS)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), (line, stderr_path.read_text())
        address = line.split()[1]
        expected = health_pb2.HealthCheckResponse.SERVING if which == "right CA" else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5).status == expected
            stub = pb_grpc.TaskHubSidecarServiceStub(channel)
            if which == "right CA":
                stub.StartInstance(pb.CreateInstanceRequest(instanceId="sub", name="Orch"), timeout=5)
            else:
                with pytest.raises(grpc.RpcError) as e:
                    stub.StartInstance(pb.CreateInstanceRequest(instanceId="sub", name="Orch"), timeout=5)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE and PASSWORD not in (e.value.details() or "")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(20)
        proc.stdout.close()
    log = stderr_path.read_text()
    assert code == 0, log
    serving = [entry for entry in log.splitlines() if "serving TaskHubSidecarService" in entry]
    assert len(serving) == 1, log
    assert "Redis at rediss://:***@localhost:" in serving[0], serving[0]
    assert PASSWORD not in log, log


# -- helpers --------------------------------------------------------------------------------

async def _is(value, expected) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value


async def _prefix_keys(client, prefix: str) -> list[str]:
    return [k.decode() async for k in client.scan_iter(match=prefix + ":*", count=1000)]


async def _next_work(call) -> pb.WorkItem:
    while True:
        item = await asyncio.wait_for(call.read(), 5)
        assert item is not grpc.aio.EOF
        if not item.HasField("healthPing"):
            return item


def _done(token: str) -> pb.OrchestratorResponse:
    from google.protobuf import wrappers_pb2

    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value='"ok"')))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)
