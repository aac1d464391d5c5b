"""``dt-scheduler serve --processes N`` as processes: N server processes share one port and each serves
calls (health too); the supervisor's metrics endpoint merges theirs; SIGTERM drains them all and the
supervisor exits 0; a process that dies takes the supervisor down with a non-zero code; a supervisor
that dies takes its processes down; a taken port is one line and exit code 2; N=1 starts no process."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.testing import free_port, start_server
from server_helpers import eventually, gone

MAX_CHANNELS = 64  # connections are spread by a hash: both processes get one of 64 but with odds of 2**-63
CALLS = 20  # StartInstance and GetInstance calls per channel


def poll(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("dt-scheduler: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def json_lines(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def scrape(port: int) -> dict[tuple[str, tuple], list[float]]:
    """Every sample of the metrics endpoint: (name, sorted labels) -> values (one, unless duplicated)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples: dict[tuple[str, tuple], list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault((s.name, tuple(sorted(s.labels.items()))), []).append(s.value)
    return samples


async def test_two_processes_serve_calls_on_one_port_and_their_metrics_are_merged(redis_url, key_prefix, hub_name,
                                                                                 tmp_path):
    metrics_port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        server = start_server(redis_url, "--processes", "2", "--key-prefix", key_prefix, "--task-hub", hub_name,
                              "--log-format", "json", "--metrics-port", str(metrics_port), log_level="INFO",
                              stderr=log_file)
    try:
        assert len(server.server_processes()) == 2
        terminations = []  # the audit line of each channel's TerminateInstance: which process served it
        channels = 0
        while {line.get("process") for line in terminations} != {1, 2} and channels < MAX_CHANNELS:
            # A channel of its own subchannel pool is a connection of its own (else channels share one).
            async with grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                ready = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="readiness"))
                assert ready.status == health_pb2.HealthCheckResponse.SERVING
                stub = pb_grpc.TaskHubSidecarServiceStub(ch)
                ids = [f"c{channels}-{i}" for i in range(CALLS)]
                await asyncio.gather(*(stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"))
                                       for iid in ids))
                got = await asyncio.gather(*(stub.GetInstance(pb.GetInstanceRequest(instanceId=iid)) for iid in ids))
                assert all(reply.exists for reply in got)
                await stub.TerminateInstance(pb.TerminateRequest(instanceId=ids[0]))
            channels += 1

            async def logged() -> bool:
                nonlocal terminations
                terminations = [line for line in json_lines(log_path) if line["message"].startswith("TerminateInstance")]
                return len(terminations) == channels

            await eventually(logged)
        assert {line.get("process") for line in terminations} == {1, 2}, "one process served every connection"
        assert all(line["replica"] == terminations[0]["replica"] for line in terminations)

        samples = await asyncio.to_thread(scrape, metrics_port)  # one endpoint, the sum of both processes
        assert samples[("dt_rpc_requests_total", (("code", "OK"), ("method", "StartInstance")))] == [CALLS * channels]
        assert samples[("dt_rpc_requests_total", (("code", "OK"), ("method", "GetInstance")))] == [CALLS * channels]
        assert samples[("dt_work_streams", ())] == [0]

        async def instances_sampled() -> bool:  # every 5 s by each process: the latest reading, once
            nonlocal samples
            samples = await asyncio.to_thread(scrape, metrics_port)
            return samples.get(("dt_instances", (("hub", hub_name), ("status", "TERMINATED")))) == [channels]

        await eventually(instances_sampled, timeout=15, interval=0.2)
        assert samples[("dt_instances", (("hub", hub_name), ("status", "PENDING")))] == [(CALLS - 1) * channels]
    finally:
        assert server.stop() == 0
    supervisor = [line for line in json_lines(log_path) if line["logger"] == "scheduler.processes"]
    assert supervisor and all(line["process"] == 0 for line in supervisor)


def test_sigterm_drains_every_process_and_the_supervisor_exits_0(redis_url, tmp_path):
    server = start_server(redis_url, "--processes", "2", "--metrics-port", str(free_port()),
                          env={"TMPDIR": str(tmp_path)})
    processes = server.server_processes()
    assert len(processes) == 2
    assert len(list(tmp_path.glob("dt-metrics-*"))) == 1  # the processes' metric files
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 15  # nothing handed out: no grace to wait for
    assert all(gone(pid) for pid in processes)
    assert not list(tmp_path.glob("dt-metrics-*"))


def test_a_process_that_dies_stops_the_others_and_the_supervisor_fails(redis_url, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        server = start_server(redis_url, "--processes", "2", "--shutdown-grace-seconds", "1", log_level="INFO",
                              stderr=log_file)
    try:
        victim, other = server.server_processes()
        os.kill(victim, signal.SIGKILL)
        assert server.proc.wait(30) == 1
        assert gone(other)
        assert "was killed by SIGKILL: stopping the others" in log_path.read_text()
    finally:
        server.kill()


def test_processes_whose_supervisor_dies_shut_down(redis_url):
    server = start_server(redis_url, "--processes", "2", "--shutdown-grace-seconds", "1")
    processes = server.server_processes()
    server.kill()
    assert poll(lambda: all(gone(pid) for pid in processes), timeout=20)


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", "serve", "--processes", "2", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag, named", [("--port", "--port (DT_PORT)"),
                                         ("--metrics-port", "--metrics-port (DT_METRICS_PORT)")])
def test_a_taken_port_ends_the_supervisor_with_one_line(taken_port, redis_url, flag, named):
    args = ["--port", "0", flag, str(taken_port)] if flag == "--metrics-port" else [flag, str(taken_port)]
    out = serve(*args, "--redis-url", redis_url)
    assert out.returncode == 2
    assert named in one_line(out.stderr) and "already in use" in out.stderr


def test_a_port_that_other_processes_share_is_taken(redis_url):
    """SO_REUSEPORT would let a second supervisor join the first one's port: the check refuses it."""
    first = start_server(redis_url, "--processes", "2")
    try:
        port = first.address.rsplit(":", 1)[1]
        out = serve("--port", port, "--redis-url", redis_url)
        assert out.returncode == 2 and "--port (DT_PORT)" in one_line(out.stderr)
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("args", [[], ["--processes", "1"]])
def test_one_process_starts_no_other(redis_url, args):
    server = start_server(redis_url, *args)
    try:
        with open(f"/proc/{server.pid}/task/{server.pid}/children", encoding="ascii") as f:
            assert f.read().split() == []
    finally:
        assert server.stop() == 0
