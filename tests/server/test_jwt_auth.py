"""Workload identity over a real port: JWTs (as Kubernetes projects ServiceAccount tokens) verified
against a JWKS file the test writes, with keys it makes (RSA and EC); subjects map to roles and task
hubs in the tokens file; the JWKS file and the subjects are re-read when they change."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time

import grpc
import pytest

from jwt_keys import AUDIENCE, ISSUER, SigningKey, forged, subject, write_jwks
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.store.keys import HubKeys
from server_helpers import PARTITIONS, eventually, next_work, rpc_error, snapshot

ADMIN_TOKEN = "admin-" + secrets.token_hex(16)
WORKER = subject("orders", "worker")  # worker on hub a
CLIENT = subject("orders", "api")  # client on hub a
STRANGER = subject("orders", "stranger")  # verified by the cluster, no entry
SUBJECTS = [
    {"name": "orders-workers", "subject": WORKER, "role": "worker", "hubs": ["a"]},
    {"name": "orders-api", "subject": CLIENT, "role": "client", "hubs": ["a"]},
]


def write_tokens(path, subjects) -> None:
    tmp = f"{path}.new"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"tokens": [{"name": "ops", "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
                               "role": "admin", "hubs": ["*"]}],
                   "subjects": subjects}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@pytest.fixture
def paths(tmp_path, rsa_key, ec_key) -> tuple[str, str]:
    tokens, jwks = str(tmp_path / "tokens.json"), str(tmp_path / "jwks.json")
    write_tokens(tokens, SUBJECTS)
    write_jwks(jwks, rsa_key, ec_key)
    return tokens, jwks


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name, paths):
    tokens, jwks = paths
    started = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                              auth_tokens_file=tokens, auth_jwks_file=jwks, auth_jwt_audience=AUDIENCE,
                              auth_jwt_issuer=ISSUER, health_ping_seconds=0.2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{started.port}") as channel:  # with tokens, admins make hubs
        admin = pb_grpc.TaskHubSidecarServiceStub(channel)
        for hub in ("a", "b"):
            await admin.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=bearer(ADMIN_TOKEN, hub))
    return started


def bearer(token: str, hub: str | None = None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) + ((("taskhub", hub),) if hub else ())


async def start(stub, iid: str, md) -> None:
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"), metadata=md)


async def exists(stub, iid: str, hub: str) -> bool:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid), metadata=bearer(ADMIN_TOKEN, hub))
    return reply.exists


async def test_a_workload_token_may_do_what_its_subject_may_on_its_hubs(stub, redis, key_prefix, rsa_key, ec_key):
    client, worker = ec_key.token(CLIENT), rsa_key.token(WORKER)
    await start(stub, "i1", bearer(client, "a"))  # client role, its hub
    assert await exists(stub, "i1", "a")
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=bearer(worker, "a"))  # worker role, its hub
    try:
        item = await next_work(call)
        assert item.orchestratorRequest.instanceId == "i1"
    finally:
        call.cancel()
    pk = HubKeys(key_prefix, "a", PARTITIONS).for_instance("i1")

    async def handed_back() -> bool:  # the closed stream's hand-back has landed: nothing changes after it
        return await redis.zscore(pk.ready, "i1") is not None

    await eventually(handed_back)
    before = await snapshot(redis, key_prefix)
    message = await rpc_error(start(stub, "i2", bearer(client, "b")), grpc.StatusCode.PERMISSION_DENIED)
    assert "orders-api" in message and "task hub" in message, message
    message = await rpc_error(start(stub, "i2", bearer(worker, "a")), grpc.StatusCode.PERMISSION_DENIED)
    assert "orders-workers" in message and "StartInstance" in message, message
    await rpc_error(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=bearer(worker, "b")).read(),
                    grpc.StatusCode.PERMISSION_DENIED)
    assert await snapshot(redis, key_prefix) == before
    assert not await exists(stub, "i2", "a") and not await exists(stub, "i2", "b")


async def test_static_tokens_still_work_beside_jwts(stub):
    await start(stub, "by-admin", bearer(ADMIN_TOKEN, "b"))
    assert await exists(stub, "by-admin", "b")
    await rpc_error(start(stub, "x", bearer("not-a-token-we-know", "a")), grpc.StatusCode.UNAUTHENTICATED)


async def test_a_verified_subject_without_an_entry_is_permission_denied(stub, redis, key_prefix, rsa_key):
    before = await snapshot(redis, key_prefix)
    message = await rpc_error(start(stub, "x", bearer(rsa_key.token(STRANGER), "a")),
                              grpc.StatusCode.PERMISSION_DENIED)
    assert STRANGER in message and "no entry" in message, message
    assert await snapshot(redis, key_prefix) == before


def refused_tokens(rsa_key: SigningKey, ec_key: SigningKey) -> dict[str, tuple[str, str]]:
    """name -> (a token for CLIENT that must be refused, what the refusal says)."""
    now = int(time.time())
    claims = {"aud": [AUDIENCE], "iss": ISSUER, "sub": CLIENT, "iat": now, "exp": now + 600}
    return {
        "wrong audience": (ec_key.token(CLIENT, aud=["kubernetes"]), "audience"),
        "wrong issuer": (ec_key.token(CLIENT, iss="https://other.example"), "issuer"),
        "expired": (ec_key.token(CLIENT, iat=now - 7200, nbf=now - 7200, exp=now - 120), "expired"),
        "bad signature": (SigningKey("ES256", kid=ec_key.kid).token(CLIENT), "signature"),
        "alg none": (forged({"alg": "none", "kid": rsa_key.kid}, claims, b"x"), "algorithm"),
        "unknown kid": (SigningKey("RS256").token(CLIENT), "kid"),
    }


@pytest.mark.parametrize("case", ["wrong audience", "wrong issuer", "expired", "bad signature", "alg none",
                                  "unknown kid"])
async def test_a_token_that_does_not_verify_is_unauthenticated(stub, redis, key_prefix, rsa_key, ec_key, case):
    token, says = refused_tokens(rsa_key, ec_key)[case]
    before = await snapshot(redis, key_prefix)
    message = await rpc_error(start(stub, "x", bearer(token, "a")), grpc.StatusCode.UNAUTHENTICATED)
    assert says in message, message
    assert not any(part in message for part in token.split(".")), message  # never echoed
    await rpc_error(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=bearer(token, "a")).read(),
                    grpc.StatusCode.UNAUTHENTICATED)
    assert await snapshot(redis, key_prefix) == before
    assert not await exists(stub, "x", "a")


async def outcome(stub, token: str) -> grpc.StatusCode:
    try:
        await stub.GetInstance(pb.GetInstanceRequest(instanceId="x"), metadata=bearer(token, "a"))
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_a_new_jwks_is_read_old_key_tokens_refused_new_key_tokens_accepted(stub, paths, rsa_key, ec_key):
    _, jwks = paths
    old, new_key = ec_key.token(CLIENT), SigningKey("ES256")
    new = new_key.token(CLIENT)
    assert await outcome(stub, old) == grpc.StatusCode.OK
    assert await outcome(stub, new) == grpc.StatusCode.UNAUTHENTICATED
    write_jwks(jwks, rsa_key, new_key)  # the cluster rotated its EC key

    async def rotated() -> bool:
        return (await outcome(stub, new) == grpc.StatusCode.OK
                and await outcome(stub, old) == grpc.StatusCode.UNAUTHENTICATED)

    took = await eventually(rotated, timeout=5.0, interval=0.02)
    assert took <= 2.5, f"the new JWKS took {took:.2f} s to be used"
    assert await outcome(stub, rsa_key.token(CLIENT)) == grpc.StatusCode.OK  # the key that stayed still works


async def test_the_subjects_are_re_read_with_the_tokens_file(stub, paths, rsa_key):
    tokens, _ = paths
    token = rsa_key.token(CLIENT)
    assert await outcome(stub, token) == grpc.StatusCode.OK
    write_tokens(tokens, [s for s in SUBJECTS if s["subject"] != CLIENT])

    async def removed() -> bool:
        return await outcome(stub, token) == grpc.StatusCode.PERMISSION_DENIED

    took = await eventually(removed, timeout=5.0, interval=0.02)
    assert took <= 2.5, f"a removed subject still worked for {took:.2f} s"
    write_tokens(tokens, [*SUBJECTS, {"name": "stranger", "subject": STRANGER, "role": "reader", "hubs": ["a"]}])

    async def added() -> bool:
        return await outcome(stub, rsa_key.token(STRANGER)) == grpc.StatusCode.OK

    await eventually(added, timeout=5.0, interval=0.02)


def test_an_unusable_jwks_file_stops_the_start_with_one_line(tmp_path, paths, rsa_key):
    tokens, _ = paths
    jwks = tmp_path / "bad-jwks.json"
    private = {**rsa_key.jwk(), "d": "AQAB"}  # a private key where the public keys belong
    for content, says in (('{"keys": []}', "the JWKS has no keys"), (json.dumps({"keys": [private]}),
                                                                     "is a private key")):
        jwks.write_text(content)
        result = subprocess.run([sys.executable, "-m", "scheduler", "serve", "--port", "0", "--auth-tokens-file",
                                 tokens, "--auth-jwks-file", str(jwks), "--auth-jwt-audience", AUDIENCE,
                                 "--auth-jwt-issuer", ISSUER], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("dt-scheduler: ")]
        assert len(lines) == 1 and lines[0].startswith(f"dt-scheduler: --auth-jwks-file {jwks}: "), result.stderr
        assert says in lines[0] and "Traceback" not in result.stderr, result.stderr
