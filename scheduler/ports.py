"""The listening ports of ``dt-scheduler serve``: checked before anything binds them, so that a taken
port is said at once in one line (before grpc logs its own), and picked when ``--port 0`` must name
one port for several processes (``--processes``)."""
from __future__ import annotations

import errno
import socket

from .config import Config


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def taken(config: Config) -> str | None:
    """One line naming the flag of the first port that cannot be bound (``--port``, then
    ``--dapr-port``, ``--metrics-port``, then ``--dashboard-port``), or None when all are free.

    The probe binds as grpc and the metrics endpoint do, with SO_REUSEADDR: a connection that closed
    on the port and waits out its TIME_WAIT (up to 60 s) leaves it free, while a live listener still
    holds it. The probe does not set SO_REUSEPORT, so a port that other processes listen on together
    (``--processes``) counts as taken too."""
    for flag, port in (("--port (DT_PORT)", config.port), ("--dapr-port (DT_DAPR_PORT)", config.dapr_port),
                       ("--metrics-port (DT_METRICS_PORT)", config.metrics_port),
                       ("--dashboard-port (DT_DASHBOARD_PORT)", config.dashboard_port)):
        if not port:
            continue
        with socket.socket(_family(config.host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, port))
            except OSError as exc:
                reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                return f"{flag}: cannot listen on {config.host}:{port}: {reason}"
    return None


def pick_free(host: str) -> int:
    """A port that is free on ``host`` now (for ``--port 0`` shared by several processes)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
