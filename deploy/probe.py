"""Exec probe for replicas that serve TLS: the kubelet's gRPC probes speak plaintext only.

    python /opt/dt-scheduler/probe.py readiness|liveness [--timeout SECONDS]

Asks the standard gRPC health service of the replica in this container (127.0.0.1:$DT_PORT) over
TLS; exits 0 when the service answers SERVING, 1 otherwise (with one line on stderr saying why).
It reads what the replica reads: DT_PORT, DT_TLS_CERT_FILE, DT_TLS_KEY_FILE, DT_TLS_CLIENT_CA_FILE;
and DT_PROBE_CA_FILE (the CA that signed the server's certificate; default: ca.crt beside
DT_TLS_CERT_FILE, as cert-manager writes it) and DT_PROBE_SERVER_NAME (a DNS name on the server's
certificate; default: dt-scheduler). With mutual TLS (DT_TLS_CLIENT_CA_FILE) the probe presents the
server's own certificate and key, which works when the client CA also signed the server certificate.
Copied into the image by deploy/Dockerfile; used by deploy/components/tls.
"""
from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("service", help="health service name: readiness or liveness")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    env = os.environ
    port = env.get("DT_PORT", "4001")
    cert = env.get("DT_TLS_CERT_FILE")
    try:
        if cert:
            ca = env.get("DT_PROBE_CA_FILE") or os.path.join(os.path.dirname(cert), "ca.crt")
            chain = key = None
            if env.get("DT_TLS_CLIENT_CA_FILE"):
                chain, key = _read(cert), _read(env["DT_TLS_KEY_FILE"])
            credentials = grpc.ssl_channel_credentials(root_certificates=_read(ca), private_key=key,
                                                       certificate_chain=chain)
            name = env.get("DT_PROBE_SERVER_NAME") or "dt-scheduler"
            channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                                          options=[("grpc.ssl_target_name_override", name)])
        else:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    except OSError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"probe: {args.service}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"probe: {args.service}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
