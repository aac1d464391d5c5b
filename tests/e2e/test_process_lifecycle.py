"""The replica as a process: it refuses a bad start at once with one clear line, honours SIGTERM while
starting, and on SIGTERM drains: an activity already handed out finishes (and is not run again) while
the official SDK worker moves to another replica."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
from durabletask import client, task, worker

from e2e_helpers import poll
from scheduler.testing import ServerProcess, free_port, start_server

pytestmark = pytest.mark.e2e


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("dt-scheduler: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_taken_grpc_port_ends_the_process_at_once(taken_port, redis_url):
    started = time.monotonic()
    out = serve("--port", str(taken_port), "--redis-url", redis_url)
    assert out.returncode == 2 and time.monotonic() - started < 10
    assert "--port (DT_PORT)" in one_line(out.stderr) and "already in use" in out.stderr


def test_a_taken_metrics_port_ends_the_process_at_once(taken_port, redis_url):
    out = serve("--port", "0", "--metrics-port", str(taken_port), "--redis-url", redis_url)
    assert out.returncode == 2 and "--metrics-port (DT_METRICS_PORT)" in one_line(out.stderr)


@pytest.mark.parametrize("args, env, named", [
    (["--redis-url", "redis://localhost:notaport/0"], {}, "--redis-url (DT_REDIS_URL)"),
    (["--redis-url", "http://localhost/0"], {}, "--redis-url (DT_REDIS_URL)"),
    ([], {"DT_PORT": "abc"}, "DT_PORT"),
    ([], {"DT_LEASE_SECONDS": "soon"}, "DT_LEASE_SECONDS"),
    (["--host", "0.0.0.0"], {}, "--allow-unauthenticated"),
    (["--host", "0.0.0.0", "--allow-unauthenticated"], {}, "--redis-url (DT_REDIS_URL)"),  # the embedded store
    (["--tls-cert-file", "/no/such/cert.pem", "--tls-key-file", "/no/such/key.pem"], {}, "--tls-cert-file"),
])
def test_a_bad_value_ends_the_process_with_one_line_naming_it(args, env, named):
    out = serve(*args, env=env)
    assert out.returncode == 2 and named in one_line(out.stderr)


def catches_sigterm(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process has a handler for SIGTERM (its caught-signals mask in /proc)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/status") as status:
            caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        assert time.monotonic() < deadline, "the process never caught SIGTERM"
        time.sleep(0.001)


def test_sigterm_is_honoured_while_starting(redis_url):
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--port", "0", "--redis-url",
                             "redis://127.0.0.1:1/0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # Redis unreachable: it serves UNAVAILABLE until Redis comes; a SIGTERM at any moment ends it
        catches_sigterm(proc.pid)  # from its first line on, while it still imports
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


SLOW_SECONDS = 3.0


def slow(ctx: task.ActivityContext, n: int) -> int:
    r = redis.Redis.from_url(os.environ["DRAIN_TEST_REDIS"])
    r.rpush(os.environ["DRAIN_TEST_KEY"], f"start {n}")
    time.sleep(SLOW_SECONDS)
    r.rpush(os.environ["DRAIN_TEST_KEY"], f"end {n}")
    return n + 1


def one_slow_step(ctx: task.OrchestrationContext, n: int):
    result = yield ctx.call_activity(slow, input=n)
    return result


def test_sigterm_drains_the_activity_in_hand_finishes_and_is_not_run_again(replicas, redis_url, key_prefix, rds):
    os.environ["DRAIN_TEST_REDIS"], os.environ["DRAIN_TEST_KEY"] = redis_url, f"{key_prefix}:activity-runs"
    first = replicas.start("--lease-seconds", "2", "--health-ping-seconds", "0.5", "--shutdown-grace-seconds", "20")
    second = replicas.start("--lease-seconds", "2", "--health-ping-seconds", "0.5")
    w = worker.TaskHubGrpcWorker(host_address=first.address)  # the worker is on the replica that goes away
    w.add_orchestrator(one_slow_step)
    w.add_activity(slow)
    w.start()
    c = client.TaskHubGrpcClient(host_address=second.address)
    try:
        iid = c.schedule_new_orchestration(one_slow_step, input=1)
        poll(lambda: rds.lrange(f"{key_prefix}:activity-runs", 0, -1), timeout=30, what="the activity to start")
        stopped: list[int] = []
        stopper = threading.Thread(target=lambda: stopped.append(first.stop(30)))
        sigterm_at = time.monotonic()
        stopper.start()
        stopper.join(40)
        assert stopped == [0], "the draining replica did not exit cleanly"
        assert time.monotonic() - sigterm_at < SLOW_SECONDS + 10  # it waited for the activity, not its whole grace
        w.stop()  # its replica is gone: run the rest (the next episode) on the other replica
        w2 = worker.TaskHubGrpcWorker(host_address=second.address)
        w2.add_orchestrator(one_slow_step)
        w2.add_activity(slow)
        w2.start()
        try:
            state = c.wait_for_orchestration_completion(iid, timeout=60)
        finally:
            w2.stop()
        assert state.runtime_status == client.OrchestrationStatus.COMPLETED and state.serialized_output == "2"
        assert rds.lrange(f"{key_prefix}:activity-runs", 0, -1) == [b"start 1", b"end 1"]  # ran once
    finally:
        c.close()
