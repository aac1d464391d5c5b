"""A replica starts again at once on the port it served: a connection whose server side closed first
leaves a TIME_WAIT socket on that port (for up to 60 s), which is not a taken port (grpc's own bind sets
SO_REUSEADDR, and so does the port check), with one process or with ``--processes``."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.testing import start_server
from server_helpers import gone

TIME_WAIT = "06"  # the state column of /proc/net/tcp


def sockets_on(port: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of the TCP sockets of this machine with ``port`` at either end."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
            if port in (local, remote):
                found.append((local, remote, fields[3]))
    return found


async def killed_with_time_wait(redis_url: str, args: list[str]) -> tuple[int, list[tuple[int, int, str]]]:
    """Start a server, call it, SIGKILL it: (its port, the sockets left there)."""
    first = start_server(redis_url, *args)
    port = int(first.address.rsplit(":", 1)[1])
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Killed, its connections are closed by the kernel: the server's side closes first and holds
            # TIME_WAIT. Not before it has read what the client sent after the reply (HTTP/2 pings and
            # window updates): a socket closed with unread data is reset, and leaves no TIME_WAIT (nor
            # does a graceful stop, which resets its connections too).
            await asyncio.sleep(0.5)
            pids = first.server_processes()  # with --processes: the one that serves the call among them
            assert len(pids) == (2 if args else 0)
            if pids:  # the supervisor must not act (stop the others) while they are killed here
                os.kill(first.proc.pid, signal.SIGSTOP)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            first.kill()
            # every server process ended (its sockets closed) before the client closes its end
            deadline = time.monotonic() + 10
            while not all(gone(pid) for pid in pids):
                assert time.monotonic() < deadline, "a killed server process did not end"
                await asyncio.sleep(0.01)
    finally:
        first.kill()
    return port, sockets_on(port)


@pytest.mark.parametrize("args", [[], ["--processes", "2"]], ids=["one-process", "processes"])
async def test_a_replica_starts_again_on_its_port_while_a_connection_there_is_in_time_wait(redis_url, args):
    # Which side closes first is the kernel's doing, not ours: on a loaded machine the client's side now
    # and then does, and leaves the TIME_WAIT on its own port. Arranged again, at most three times.
    for _ in range(3):
        port, sockets = await killed_with_time_wait(redis_url, args)
        if any(local == port and state == TIME_WAIT for local, _, state in sockets):
            break
    assert any(local == port and state == TIME_WAIT for local, _, state in sockets), \
        f"the test needs a TIME_WAIT socket on the port; there are {sockets}"
    second = start_server(redis_url, *args, "--port", str(port))
    try:
        assert second.address == f"127.0.0.1:{port}"
    finally:
        assert second.stop() == 0
