"""The reference server: the durabletask SDK's in-memory backend, in its own process.

Run as a script (``python benchmarks/ref_backend.py``, or :func:`start` from the
benchmark process): the SDK's generated proto module and ours cannot be imported
in one process, so this module imports the SDK only inside :func:`main`. That
starts the backend the way ``durabletask.testing.create_test_backend`` does (the same servicer, a sync
``grpc.server`` on a ThreadPoolExecutor(max_workers=10)) except that it binds
127.0.0.1 on a free port instead of ``[::]:<port>``. It prints
``READY 127.0.0.1:<port>`` and serves until its stdin closes.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from concurrent import futures


def start() -> tuple[subprocess.Popen, str]:
    """Start the reference in a subprocess; returns it and its address once it is serving."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"reference backend did not start: {line!r}")
    return proc, line.split()[1]


def stop(proc: subprocess.Popen) -> None:
    """Close its stdin (it then stops its server and exits); kill it if it does not exit in time."""
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> int:
    import grpc
    from durabletask.internal import orchestrator_service_pb2_grpc as stubs
    from durabletask.testing import InMemoryOrchestrationBackend

    backend = InMemoryOrchestrationBackend(port=0)
    # Same as InMemoryOrchestrationBackend.start(), bound to loopback only.
    backend._shutdown_event.clear()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    backend._server = server
    stubs.add_TaskHubSidecarServiceServicer_to_server(backend, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    backend.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
