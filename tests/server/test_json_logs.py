"""``serve --log-format json``: every line the process writes, on stdout and on stderr, is one JSON object —
the READY line, the service's log records, a startup error, and what gRPC's C core would write on its own
(a TLS handshake that fails is such a line). The build info reaches /metrics."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from certs import Certs, certs  # noqa: F401 - certs is a fixture
from scheduler.logs import ready_address
from scheduler.testing import free_port

HANDSHAKE_MARK = "Handshake failed"  # what gRPC's C core writes when a client speaks plaintext to a TLS port


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--log-format", "json", "--log-level", "INFO", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith(("DT_", "GRPC_"))},
                                 **env})
    first = proc.stdout.readline()  # the READY line comes before anything else on stdout
    address = ready_address(first)
    if address is None:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"no READY line: {first!r}\n{err[-3000:]}")
    return proc, first


def plaintext_to_tls(address: str) -> None:
    """An HTTP request to the TLS port: the handshake fails in gRPC's C core."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            sock.recv(1024)  # the server closes the connection: the handshake was tried
        except OSError:
            pass


def stop(proc: subprocess.Popen) -> tuple[list[str], list[str]]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return out.splitlines(), err.splitlines()


def not_json(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(entry, dict) or not {"time", "level", "logger", "message", "replica"} <= entry.keys():
            bad.append(line)
    return bad


def test_every_line_is_json_and_the_build_info_is_served(certs: Certs):
    metrics_port = free_port()
    proc, ready_line = start(["--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key),
                              "--metrics-port", str(metrics_port)],
                             {"DT_BUILD_REVISION": "0123abcd", "DT_REPLICA": "json-replica"})
    try:
        address = ready_address(ready_line)
        assert json.loads(ready_line)["address"] == address and address.startswith("127.0.0.1:")
        plaintext_to_tls(address)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
            text = page.read().decode()
        info = [s for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "dt_build_info"]
        assert len(info) == 1 and info[0].value == 1, info
        assert info[0].labels["revision"] == "0123abcd"
        assert info[0].labels["python"] == ".".join(map(str, sys.version_info[:3]))
    finally:
        out, err = stop(proc)
    assert not not_json(out + err), "lines that are not JSON log objects:\n" + "\n".join(not_json(out + err))
    messages = [json.loads(line)["message"] for line in err]
    assert any(m.startswith("serving TaskHubSidecarService") for m in messages)
    assert any(m.startswith("shutting down") for m in messages)
    assert all(json.loads(line)["replica"] == "json-replica" for line in out + err)


def test_the_operators_grpc_verbosity_wins(certs: Certs):
    """GRPC_VERBOSITY set explicitly is kept (e.g. to debug TLS): the C core's lines then come, not as JSON.
    This also shows the first test's client does make the C core write (its silence there is the fix)."""
    proc, ready_line = start(["--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key)],
                             {"GRPC_VERBOSITY": "INFO"})
    try:
        plaintext_to_tls(ready_address(ready_line))
    finally:
        out, err = stop(proc)
    assert any(HANDSHAKE_MARK in line for line in not_json(err)), err


def test_a_startup_error_is_one_json_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scheduler", "serve", "--host", "127.0.0.1", "--port", "0",
                           "--log-format", "json", "--auth-tokens-file", str(tmp_path / "missing.json")],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("DT_", "GRPC_"))})
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not not_json(lines), lines
    errors = [json.loads(line) for line in lines if json.loads(line)["level"] == "ERROR"]
    assert len(errors) == 1 and "missing.json" in errors[0]["message"], lines
