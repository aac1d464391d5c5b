"""A replica starts again at once on the port it served: a connection whose server side closed first
leaves a TIME_WAIT socket on that port (for up to 60 s), which is not a taken port (grpc's own bind sets
SO_REUSEADDR, and so does the port check), with one process or with ``--processes``."""
from __future__ import annotations

import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.testing import start_server

TIME_WAIT = "06"  # the state column of /proc/net/tcp


def time_wait_on(port: int) -> bool:
    """A TCP socket of this machine whose local port is ``port`` is in TIME_WAIT."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == TIME_WAIT:
                return True
    return False


@pytest.mark.parametrize("args", [[], ["--processes", "2"]], ids=["one-process", "processes"])
async def test_a_replica_starts_again_on_its_port_while_a_connection_there_is_in_time_wait(redis_url, args):
    first = start_server(redis_url, *args)
    port = int(first.address.rsplit(":", 1)[1])
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Killed, its connections are closed by the kernel: the server's side closes first and holds
            # TIME_WAIT. (A graceful stop resets them instead: no TIME_WAIT.)
            for pid in first.server_processes():  # with --processes: the one that serves the call among them
                os.kill(pid, signal.SIGKILL)
            first.kill()
    finally:
        first.kill()
    assert time_wait_on(port), "the test needs a TIME_WAIT socket on the port"
    second = start_server(redis_url, *args, "--port", str(port))
    try:
        assert second.address == f"127.0.0.1:{port}"
    finally:
        assert second.stop() == 0
