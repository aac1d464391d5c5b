"""deploy/components/tls (used by the redis-cluster overlay): the kubelet's gRPC probes speak
plaintext, so with TLS on the probes are exec probes running deploy/probe.py. Run here as the
kubelet would run them — the rendered command, the container's environment, the TLS Secret's files
(as cert-manager writes them: tls.crt, tls.key, ca.crt) — against a replica that serves TLS."""
from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy_helpers import (DEPLOY, base_process_env, container, container_env, find, local_command,
                            materialize_mounts, remap_paths, render)
from scheduler.testing import start_server


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificates to test TLS probes with")
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "tls.key",
             "-out", "tls.csr", "-subj", "/CN=dt-scheduler", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:dt-scheduler,DNS:dt-scheduler.dt-scheduler.svc\n")
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


def _secret(name: str, data: dict[str, bytes]) -> dict:
    """A Secret as `kubectl create secret` would have made it beforehand."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def _probe_runner(certs: Path, tmp_path: Path, ca: str = "ca.crt"):
    objects = render("overlays/redis-cluster") + [
        _secret("dt-scheduler-redis", {"password": b"unused"}),
        _secret("dt-scheduler-tokens", {"tokens.json": b'{"tokens": []}'}),
        _secret("dt-scheduler-tls", {"tls.crt": (certs / "tls.crt").read_bytes(),
                                     "tls.key": (certs / "tls.key").read_bytes(),
                                     "ca.crt": (certs / ca).read_bytes()}),
        _secret("dt-scheduler-redis-ca", {"ca.crt": (certs / "ca.crt").read_bytes()}),  # components/redis-tls
    ]
    deployment = find(objects, "Deployment", "dt-scheduler")
    ctr = container(deployment)
    env = container_env(objects, ctr, "dt-scheduler-0", "dt-scheduler")
    env = remap_paths(env, materialize_mounts(objects, deployment, ctr, tmp_path / "mounts"))

    def run(kind: str, port: int, **overrides: str) -> subprocess.CompletedProcess:
        command = [DEPLOY / "probe.py" if a == "/opt/dt-scheduler/probe.py" else a  # where the image has it
                   for a in ctr[kind]["exec"]["command"]]
        process_env = {**base_process_env(), **env, "DT_PORT": str(port), **overrides}
        return subprocess.run(local_command([str(a) for a in command]), env=process_env, capture_output=True,
                              text=True, timeout=ctr[kind]["timeoutSeconds"] + 10)

    return run, env


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_exec_probes_over_tls(certs, tmp_path):
    run, env = _probe_runner(certs, tmp_path)
    server = start_server(None, "--tls-cert-file", env["DT_TLS_CERT_FILE"], "--tls-key-file", env["DT_TLS_KEY_FILE"])
    try:
        port = int(server.address.rsplit(":", 1)[1])
        for kind in PROBES:
            result = run(kind, port)
            assert result.returncode == 0, f"{kind}: {result.stderr}"
        # It really checks: a server name not on the certificate, or nothing listening, fails.
        wrong = run("readinessProbe", port, DT_PROBE_SERVER_NAME="not-on-the-certificate")
        assert wrong.returncode == 1 and "readiness" in wrong.stderr
    finally:
        assert server.stop() == 0
    gone = run("livenessProbe", port)
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr


def test_exec_probe_distrusts_another_ca(certs, tmp_path):
    run, env = _probe_runner(certs, tmp_path, ca="other-ca.crt")
    server = start_server(None, "--tls-cert-file", env["DT_TLS_CERT_FILE"], "--tls-key-file", env["DT_TLS_KEY_FILE"])
    try:
        assert run("readinessProbe", int(server.address.rsplit(":", 1)[1])).returncode == 1
    finally:
        server.stop()


def test_exec_probes_with_mutual_tls(certs, tmp_path):
    run, env = _probe_runner(certs, tmp_path)
    ca_file = str(Path(env["DT_TLS_CERT_FILE"]).parent / "ca.crt")
    server = start_server(None, "--tls-cert-file", env["DT_TLS_CERT_FILE"], "--tls-key-file", env["DT_TLS_KEY_FILE"],
                          "--tls-client-ca-file", ca_file)
    try:
        port = int(server.address.rsplit(":", 1)[1])
        for kind in PROBES:  # the probe presents the server's own certificate, signed by the client CA
            result = run(kind, port, DT_TLS_CLIENT_CA_FILE=ca_file)
            assert result.returncode == 0, f"{kind}: {result.stderr}"
        assert run("readinessProbe", port).returncode == 1  # without a client certificate: refused
    finally:
        assert server.stop() == 0
