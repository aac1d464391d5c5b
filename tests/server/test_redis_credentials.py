"""Redis credentials in every URL form: ``redis://user:pass@host``, ``redis://host?password=...`` and
``redis://host?username=...&password=...``, against a redis-server that requires a password and one that
only knows an ACL user. Every connection path (the redis-py pool, the pipelined request connection, the
pub/sub wake-ups) logs in with them, and the password shows in no log line."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

import grpc
import pytest
import redis
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.engine import waiters as waiters_module
from scheduler.testing import free_port
from server_helpers import PARTITIONS, eventually, next_work

PASSWORD = "pw-9f3Kq2x"  # distinctive: found in a log line only if it leaked
USER = "dtapp"


@contextlib.contextmanager
def redis_server(tmp_path, *auth_args: str) -> Iterator[int]:
    """A redis-server of the test's own on a free port with ``auth_args``; stopped by its pid."""
    port = free_port()
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    logfile = tmp_path / "redis.log"
    proc = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(tmp_path), "--logfile", str(logfile), *auth_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"redis-server exited: {logfile.read_text() if logfile.exists() else ''}"
            try:
                with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1) as probe:
                    probe.ping()
            except redis.exceptions.AuthenticationError:
                break  # serving, and refusing who has no credentials
            except redis.exceptions.ResponseError as exc:
                assert "NOAUTH" in str(exc) or "NOPERM" in str(exc), exc
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                pass
            else:
                raise AssertionError("the redis-server answers without credentials")
            assert time.monotonic() < deadline, "the redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.fixture(scope="module")
def requirepass_port(tmp_path_factory) -> Iterator[int]:
    with redis_server(tmp_path_factory.mktemp("requirepass"), "--requirepass", PASSWORD) as port:
        yield port


@pytest.fixture(scope="module")
def acl_port(tmp_path_factory) -> Iterator[int]:
    """Only the ACL user USER: the default user is off."""
    with redis_server(tmp_path_factory.mktemp("acl"), "--user", "default", "off",
                      "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all") as port:
        yield port


# (server, how the URL carries the credentials) -> the URL
FORMS = {
    "requirepass, user info": lambda port: f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
    "requirepass, ?password=": lambda port: f"redis://127.0.0.1:{port}/0?password={quote(PASSWORD)}",
    "acl, user info": lambda port: f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0",
    "acl, ?username=&password=": lambda port: f"redis://127.0.0.1:{port}/0?username={USER}&password={PASSWORD}",
    "acl, user in user info, ?password=": lambda port: f"redis://{USER}@127.0.0.1:{port}/0?password={PASSWORD}",
}


@pytest.fixture(params=list(FORMS))
def url(request) -> str:
    port = request.getfixturevalue("acl_port" if request.param.startswith("acl") else "requirepass_port")
    return FORMS[request.param](port)


async def readiness(app) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="readiness"),
                                                                timeout=10)
        return reply.status


def done(token: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value='"ok"')))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)


async def test_every_connection_path_logs_in_with_the_urls_credentials(start_app, url, key_prefix, hub_name,
                                                                       caplog, monkeypatch):
    # A waiter re-reads the instance on its own only after this long: within the test, only a wake-up
    # published through Redis pub/sub can answer a waiter on the other replica.
    monkeypatch.setattr(waiters_module, "RECHECK_SECONDS", 120.0)
    caplog.set_level("DEBUG")
    common = dict(redis_url=url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    first, second = await start_app(**common), await start_app(**common)
    for app in (first, second):  # Store.ping: the pipelined connection and the pool
        assert await readiness(app) == health_pb2.HealthCheckResponse.SERVING

    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as ch1, \
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as ch2:
        stub1, stub2 = pb_grpc.TaskHubSidecarServiceStub(ch1), pb_grpc.TaskHubSidecarServiceStub(ch2)
        await stub1.StartInstance(pb.CreateInstanceRequest(instanceId="cred-1", name="Orch"),  # pipelined connection
                                 timeout=10)
        waiter = asyncio.ensure_future(stub1.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="cred-1"),
                                                                       timeout=60))

        async def waiting() -> bool:
            return (hub_name, "cred-1") in first.engine.waiters._waiting

        await eventually(waiting)
        stream = stub2.GetWorkItems(pb.GetWorkItemsRequest())
        try:
            item = await next_work(stream)
            assert item.orchestratorRequest.instanceId == "cred-1"
            await stub2.CompleteOrchestratorTask(done(item.completionToken), timeout=10)
        finally:
            stream.cancel()
        answered = await asyncio.wait_for(waiter, 10)  # woken by the pub/sub wake-up, not the 120 s re-read
        assert answered.orchestrationState.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize("form", ["requirepass, ?password=", "acl, ?username=&password="])
def test_the_startup_line_shows_no_password_in_any_form(form, requirepass_port, acl_port, key_prefix, hub_name,
                                                        tmp_path):
    port = acl_port if form.startswith("acl") else requirepass_port
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--host", "127.0.0.1", "--port", "0",
                                 "--log-level", "DEBUG", "--redis-url", FORMS[form](port), "--key-prefix",
                                 key_prefix, "--task-hub", hub_name, "--partitions", str(PARTITIONS)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), (line, stderr_path.read_text())
        with grpc.insecure_channel(line.split()[1]) as channel:
            pb_grpc.TaskHubSidecarServiceStub(channel).StartInstance(
                pb.CreateInstanceRequest(instanceId="sub", name="Orch"), timeout=5)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(20)
        proc.stdout.close()
    log = stderr_path.read_text()
    assert code == 0, log
    serving = [entry for entry in log.splitlines() if "serving TaskHubSidecarService" in entry]
    assert len(serving) == 1 and "password=***" in serving[0], log
    assert PASSWORD not in log, log
