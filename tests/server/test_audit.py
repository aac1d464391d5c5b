"""The audit log, over a real port with bearer tokens: every destructive call is logged once, after its
outcome is known, with the caller's name, role and address and the outcome (OK or the status code);
refusals are logged with the caller's address; no token ever appears in a log line."""
from __future__ import annotations

import hashlib
import json
import logging
import secrets

import grpc
import pytest
from google.protobuf import wrappers_pb2

from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import PARTITIONS, rpc_error

LOGGER = "scheduler.api.interceptors"
IDENTITIES = {"reader": "reader", "client": "client", "admin": "admin"}  # name -> role (all hubs)
TOKEN = {name: f"{name}-{secrets.token_hex(16)}" for name in IDENTITIES}
UNKNOWN_TOKEN = "unknown-" + secrets.token_hex(16)


def auth(name: str, hub: str | None = None) -> tuple[tuple[str, str], ...]:
    token = TOKEN.get(name, UNKNOWN_TOKEN)
    return (("authorization", f"Bearer {token}"),) + ((("taskhub", hub),) if hub else ())


@pytest.fixture
def tokens_path(tmp_path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": f"id-{name}", "sha256": hashlib.sha256(TOKEN[name].encode()).hexdigest(), "role": role,
         "hubs": ["*"]} for name, role in IDENTITIES.items()]}))
    return str(path)


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name, tokens_path):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                           auth_tokens_file=tokens_path)


@pytest.fixture
def audit(caplog):
    """The audit lines (not refusals) logged so far, by method: audit()[method] -> [message, ...]."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    def lines(method: str) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == LOGGER and r.getMessage().startswith(method + " ") and " refused: " not in r.getMessage()]

    return lines


def peer_of(line: str) -> bool:
    return "peer ipv4:127.0.0.1:" in line


async def start(stub, iid: str, hub: str | None = None) -> None:
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"), metadata=auth("admin", hub))


async def test_each_destructive_call_is_logged_once_with_caller_role_peer_and_ok(stub, audit):
    for iid in ("t1", "s1", "s2", "p1"):
        await start(stub, iid)
    calls = [  # made one at a time: a call starts when it is made
        ("TerminateInstance", "client",
         lambda: stub.TerminateInstance(pb.TerminateRequest(instanceId="t1"), metadata=auth("client"))),
        ("SkipGracefulOrchestrationTerminations", "client",
         lambda: stub.SkipGracefulOrchestrationTerminations(pb.SkipGracefulOrchestrationTerminationsRequest(
             instanceBatch=pb.InstanceBatch(instanceIds=["s1", "s2", "nobody"])), metadata=auth("client"))),
        ("RestartInstance", "client",  # s2 ended at once (SkipGraceful...)
         lambda: stub.RestartInstance(pb.RestartInstanceRequest(instanceId="s2"), metadata=auth("client"))),
        ("PurgeInstances", "admin",
         lambda: stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="s1"), metadata=auth("admin"))),
        ("CleanEntityStorage", "admin",
         lambda: stub.CleanEntityStorage(pb.CleanEntityStorageRequest(removeEmptyEntities=True),
                                         metadata=auth("admin"))),
        ("CreateTaskHub", "admin",
         lambda: stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=auth("admin", "other"))),
        ("DeleteTaskHub", "admin",
         lambda: stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=auth("admin", "other"))),
    ]
    for method, who, call in calls:
        await call()
        lines = audit(method)
        assert len(lines) == 1, (method, lines)
        line = lines[0]
        assert f"by id-{who} (role {who}," in line and peer_of(line), line
        assert ": OK" in line, line  # the outcome, hence written once it was known
    assert "3 instance(s)" in audit("SkipGracefulOrchestrationTerminations")[0]
    assert "1 not terminated" in audit("SkipGracefulOrchestrationTerminations")[0]
    assert "OK, 1 purged" in audit("PurgeInstances")[0]


async def test_a_destructive_call_that_fails_is_logged_once_with_its_status_code(stub, audit):
    await rpc_error(stub.TerminateInstance(pb.TerminateRequest(instanceId="nobody"), metadata=auth("client")),
                    grpc.StatusCode.NOT_FOUND)
    await start(stub, "running")
    await rpc_error(stub.RewindInstance(pb.RewindInstanceRequest(instanceId="running"), metadata=auth("client")),
                    grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(stub.SkipGracefulOrchestrationTerminations(pb.SkipGracefulOrchestrationTerminationsRequest(
        instanceBatch=pb.InstanceBatch(instanceIds=["x"] * 1001)), metadata=auth("admin")),
        grpc.StatusCode.INVALID_ARGUMENT)
    for method, code in (("TerminateInstance", "NOT_FOUND"), ("RewindInstance", "FAILED_PRECONDITION"),
                         ("SkipGracefulOrchestrationTerminations", "INVALID_ARGUMENT")):
        lines = audit(method)
        assert len(lines) == 1, (method, lines)
        assert lines[0].endswith(": " + code) and peer_of(lines[0]), lines[0]


async def test_create_task_hub_says_when_recreate_if_exists_wiped_a_hub(stub, audit):
    recreate = pb.CreateTaskHubRequest(recreateIfExists=True)
    await stub.CreateTaskHub(recreate, metadata=auth("admin", "fresh"))  # nothing to wipe
    await start(stub, "kept", "fresh")
    await stub.CreateTaskHub(recreate, metadata=auth("admin", "fresh"))  # wipes "kept"
    first, second = audit("CreateTaskHub")
    assert "recreateIfExists" in first and "wiped" not in first, first
    assert "recreateIfExists wiped the existing task hub" in second, second
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId="kept"), metadata=auth("admin", "fresh"))
    assert not reply.exists


async def test_refusals_are_logged_with_the_peer_and_the_call_is_not_audited(stub, audit, caplog):
    await rpc_error(stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=auth("reader")),
                    grpc.StatusCode.PERMISSION_DENIED)
    await rpc_error(stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="x"), metadata=auth("stranger")),
                    grpc.StatusCode.UNAUTHENTICATED)
    refusals = [r.getMessage() for r in caplog.records if r.name == LOGGER and " refused: " in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert refusals[0].startswith("DeleteTaskHub refused: PERMISSION_DENIED") and peer_of(refusals[0]), refusals[0]
    assert refusals[1].startswith("PurgeInstances refused: UNAUTHENTICATED") and peer_of(refusals[1]), refusals[1]
    assert audit("DeleteTaskHub") == [] and audit("PurgeInstances") == []


async def test_no_token_appears_in_any_log_line(stub, caplog):
    caplog.set_level(logging.DEBUG)
    await start(stub, "i")
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="i", output=wrappers_pb2.StringValue(value='"x"')),
                                 metadata=auth("client"))
    await rpc_error(stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=auth("reader")),
                    grpc.StatusCode.PERMISSION_DENIED)
    await rpc_error(stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=auth("stranger")),
                    grpc.StatusCode.UNAUTHENTICATED)
    await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="i"), metadata=auth("admin"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "id-admin" in text  # the lines were captured
    for token in (*TOKEN.values(), UNKNOWN_TOKEN):
        assert token not in text and token.split("-", 1)[1] not in text
