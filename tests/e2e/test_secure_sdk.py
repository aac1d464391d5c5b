"""The official SDK over TLS and mutual TLS, with bearer tokens, against a ``scheduler serve`` subprocess.

The SDK ignores ``metadata`` when it is given a channel, so the token rides on a client interceptor
of a channel built here (see the README). Clients connect to ``localhost`` (the certificate's name).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Iterator

import grpc
import pytest
from durabletask import client, task, worker
from durabletask.internal.grpc_interceptor import DefaultClientInterceptorImpl

from certs import Certs, Pair, certs  # noqa: F401 - certs is a fixture

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus
CLIENT_TOKEN = "client-" + secrets.token_hex(12)
WORKER_TOKEN = "worker-" + secrets.token_hex(12)


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}"


def greeting(ctx: task.OrchestrationContext, name: str):
    result = yield ctx.call_activity(greet, input=name)
    return result


@pytest.fixture
def tokens_file(tmp_path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": "sdk-client", "sha256": hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest(), "role": "client",
         "hubs": ["*"]},
        {"name": "sdk-worker", "sha256": hashlib.sha256(WORKER_TOKEN.encode()).hexdigest(), "role": "worker",
         "hubs": ["*"]},
    ]}))
    return str(path)


def tls_flags(certs: Certs, tokens_file: str, mutual: bool) -> list[str]:
    flags = ["--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key),
             "--auth-tokens-file", tokens_file]
    if mutual:
        flags += ["--tls-client-ca-file", str(certs.ca.cert)]
    return flags


def localhost(address: str) -> str:
    """The server's address by the name its certificate carries."""
    return "localhost:" + address.rsplit(":", 1)[1]


def secure_channel(address: str, ca: Pair, token: str | None = None, client_cert: Pair | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_bytes(),
        private_key=client_cert.key_bytes() if client_cert else None,
        certificate_chain=client_cert.cert_bytes() if client_cert else None)
    channel = grpc.secure_channel(address, credentials)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, DefaultClientInterceptorImpl([("authorization", f"Bearer {token}")]))


@contextlib.contextmanager
def closing(*channels: grpc.Channel) -> Iterator[None]:
    try:
        yield
    finally:
        for channel in channels:
            channel.close()


def rpc_code(call) -> grpc.StatusCode:
    """The status code a blocking SDK call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_an_orchestration_with_an_activity_completes_over_tls_with_tokens(replicas, certs, tokens_file, mutual):
    server = replicas.start(*tls_flags(certs, tokens_file, mutual))
    address = localhost(server.address)
    identity = certs.client if mutual else None
    worker_channel = secure_channel(address, certs.ca, WORKER_TOKEN, identity)
    client_channel = secure_channel(address, certs.ca, CLIENT_TOKEN, identity)
    with closing(worker_channel, client_channel):
        w = worker.TaskHubGrpcWorker(channel=worker_channel)
        w.add_orchestrator(greeting)
        w.add_activity(greet)
        w.start()
        try:
            c = client.TaskHubGrpcClient(channel=client_channel)
            iid = c.schedule_new_orchestration(greeting, input="secure world")
            state = c.wait_for_orchestration_completion(iid, timeout=30)
        finally:
            w.stop()
    assert state is not None
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    assert state.serialized_output == json.dumps("Hello secure world")


def test_mutual_tls_refuses_clients_without_a_good_certificate_or_token(replicas, certs, tokens_file):
    server = replicas.start(*tls_flags(certs, tokens_file, mutual=True))
    address = localhost(server.address)
    cases = {
        "no client certificate": secure_channel(address, certs.ca, CLIENT_TOKEN),
        "a certificate of another CA": secure_channel(address, certs.ca, CLIENT_TOKEN, certs.other_client),
        "a certificate, no token": secure_channel(address, certs.ca, None, certs.client),
        "a certificate, an unknown token": secure_channel(address, certs.ca, "not-" + CLIENT_TOKEN, certs.client),
        "a certificate and a token": secure_channel(address, certs.ca, CLIENT_TOKEN, certs.client),
    }
    with closing(*cases.values()):
        clients = {what: client.TaskHubGrpcClient(channel=channel) for what, channel in cases.items()}
        outcome = {}
        for what, c in clients.items():
            try:
                c.get_orchestration_state("nobody")
                outcome[what] = "OK"
            except grpc.RpcError as exc:
                outcome[what] = exc.code().name
    assert outcome == {
        "no client certificate": "UNAVAILABLE",
        "a certificate of another CA": "UNAVAILABLE",
        "a certificate, no token": "UNAUTHENTICATED",
        "a certificate, an unknown token": "UNAUTHENTICATED",
        "a certificate and a token": "OK",  # the same server answers a client that has both
    }


def test_a_plaintext_client_cannot_talk_to_the_tls_port(replicas, certs, tokens_file):
    server = replicas.start(*tls_flags(certs, tokens_file, mutual=False))
    address = localhost(server.address)
    plain = client.TaskHubGrpcClient(host_address=address, metadata=[("authorization", f"Bearer {CLIENT_TOKEN}")])
    try:
        assert rpc_code(lambda: plain.get_orchestration_state("nobody")) == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()
    channel = secure_channel(address, certs.ca, CLIENT_TOKEN)
    with closing(channel):  # the port itself works, over TLS
        assert client.TaskHubGrpcClient(channel=channel).get_orchestration_state("nobody") is None
