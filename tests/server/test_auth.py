"""Who may call what, over a real port: bearer tokens from a tokens file, roles, task hubs; health and
reflection stay open; the tokens file and the TLS certificates are re-read when they change."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
import ssl
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import empty_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certs import Certs, certs  # noqa: F401 - certs is a fixture
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.api.roles import ADMIN_ONLY, CLIENT, READ, ROLES, WORK
from scheduler.store import keys
from server_helpers import PARTITIONS, eventually, next_work, rpc_error, snapshot

SERVICE = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
INTERCEPTOR_LOGGER = "scheduler.api.interceptors"

# name -> (role, task hubs); the secret of each is TOKEN[name]
IDENTITIES = {
    "reader": ("reader", ["*"]),
    "client": ("client", ["*"]),
    "worker": ("worker", ["*"]),
    "admin": ("admin", ["*"]),
    "client-a": ("client", ["a"]),
    "worker-a": ("worker", ["a"]),
}
TOKEN = {name: f"{name}-{secrets.token_hex(16)}" for name in (*IDENTITIES, "late")}


def identity_name(name: str) -> str:
    return "id-" + name


def tokens_document(names) -> str:
    entries = []
    for name in names:
        role, hubs = IDENTITIES.get(name, ("reader", ["*"]))
        entries.append({"name": identity_name(name), "sha256": hashlib.sha256(TOKEN[name].encode()).hexdigest(),
                        "role": role, "hubs": hubs})
    return json.dumps({"tokens": entries})


def write_tokens(path, names) -> None:
    """Replace the tokens file as a mounted Secret changes: a new file renamed over the old one."""
    tmp = f"{path}.new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(tokens_document(names))
    os.replace(tmp, path)


def auth(name: str | None, hub: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata of a call made with the token of ``name`` (none when None), naming ``hub``."""
    metadata = () if name is None else (("authorization", f"Bearer {TOKEN[name]}"),)
    return metadata + ((("taskhub", hub),) if hub else ())


@pytest.fixture
def tokens_path(tmp_path) -> str:
    path = str(tmp_path / "tokens.json")
    write_tokens(path, IDENTITIES)
    return path


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name, tokens_path):
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                           auth_tokens_file=tokens_path, health_ping_seconds=0.2)


def done(token: str) -> pb.OrchestratorResponse:
    action = pb.OrchestratorAction(id=1, completeOrchestration=pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED, result=wrappers_pb2.StringValue(value='"done"')))
    return pb.OrchestratorResponse(actions=[action], completionToken=token)


async def status_of(stub, iid: str, hub: str | None = None) -> int | None:
    reply = await stub.GetInstance(pb.GetInstanceRequest(instanceId=iid), metadata=auth("admin", hub))
    return reply.orchestrationState.orchestrationStatus if reply.exists else None


async def claim(stub, iid: str, hub: str | None = None, who: str = "admin"):
    """Start ``iid`` and claim its work item; returns (the open stream, the item)."""
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"), metadata=auth("admin", hub))
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=auth(who, hub))
    item = await next_work(call)
    assert item.orchestratorRequest.instanceId == iid
    return call, item


# -- the role matrix ------------------------------------------------------------------------

@dataclass
class Scene:
    """What a case set up, and what its call leaves open."""

    stub: pb_grpc.TaskHubSidecarServiceStub
    redis: object
    key_prefix: str
    hub: str
    token: str = ""
    streams: list = field(default_factory=list)


async def setup_started(s: Scene) -> None:
    await s.stub.StartInstance(pb.CreateInstanceRequest(instanceId="m1", name="Orch"), metadata=auth("admin"))


async def setup_claimed(s: Scene) -> None:
    call, item = await claim(s.stub, "m1")
    s.streams.append(call)  # held open: the claim stays current
    s.token = item.completionToken


async def setup_finished(s: Scene) -> None:
    await setup_claimed(s)
    await s.stub.CompleteOrchestratorTask(done(s.token), metadata=auth("admin"))
    assert await status_of(s.stub, "m1") == pb.ORCHESTRATION_STATUS_COMPLETED


async def call_get_instance(s: Scene, md) -> None:
    assert (await s.stub.GetInstance(pb.GetInstanceRequest(instanceId="m1"), metadata=md)).exists


async def call_query(s: Scene, md) -> None:
    reply = await s.stub.QueryInstances(pb.QueryInstancesRequest(query=pb.InstanceQuery(maxInstanceCount=10)),
                                        metadata=md)
    assert [o.instanceId for o in reply.orchestrationState] == ["m1"]


async def call_start(s: Scene, md) -> None:
    await s.stub.StartInstance(pb.CreateInstanceRequest(instanceId="new", name="Orch"), metadata=md)
    assert await status_of(s.stub, "new") == pb.ORCHESTRATION_STATUS_PENDING


async def call_raise(s: Scene, md) -> None:
    await s.stub.RaiseEvent(pb.RaiseEventRequest(instanceId="m1", name="go", input=wrappers_pb2.StringValue(
        value='"x"')), metadata=md)


async def call_terminate(s: Scene, md) -> None:
    await s.stub.TerminateInstance(pb.TerminateRequest(instanceId="m1"), metadata=md)


async def call_get_work_items(s: Scene, md) -> None:
    call = s.stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=md)
    s.streams.append(call)
    item = await asyncio.wait_for(call.read(), 5)  # m1 is ready: the stream hands it out
    assert item is not grpc.aio.EOF and item.orchestratorRequest.instanceId == "m1"


async def call_complete(s: Scene, md) -> None:
    await s.stub.CompleteOrchestratorTask(done(s.token), metadata=md)
    assert await status_of(s.stub, "m1") == pb.ORCHESTRATION_STATUS_COMPLETED


async def call_purge(s: Scene, md) -> None:
    reply = await s.stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="m1"), metadata=md)
    assert reply.deletedInstanceCount == 1


async def call_delete_hub(s: Scene, md) -> None:
    await s.stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=md)
    assert await status_of(s.stub, "m1") is None


async def call_create_hub(s: Scene, md) -> None:
    await s.stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=md + (("taskhub", "made"),))
    assert await s.redis.exists(keys.meta_key(s.key_prefix, "made"))


# call -> (set up, the call, the roles that may make it as the README and api/auth.py say)
MATRIX = {
    "GetInstance": (setup_started, call_get_instance, {"reader", "client", "admin"}),
    "QueryInstances": (setup_started, call_query, {"reader", "client", "admin"}),
    "StartInstance": (None, call_start, {"client", "admin"}),
    "RaiseEvent": (setup_started, call_raise, {"client", "admin"}),
    "TerminateInstance": (setup_started, call_terminate, {"client", "admin"}),
    "GetWorkItems": (setup_started, call_get_work_items, {"worker", "admin"}),
    "CompleteOrchestratorTask": (setup_claimed, call_complete, {"worker", "admin"}),
    "PurgeInstances": (setup_finished, call_purge, {"admin"}),
    "DeleteTaskHub": (setup_started, call_delete_hub, {"admin"}),
    "CreateTaskHub": (None, call_create_hub, {"admin"}),
}


@pytest.mark.parametrize("method", MATRIX)
@pytest.mark.parametrize("role", ["reader", "client", "worker", "admin"])
async def test_each_role_may_make_the_calls_of_its_set_and_no_other(stub, redis, key_prefix, hub_name, role, method):
    setup, call, documented = MATRIX[method]
    allowed = method in ROLES[role]
    assert allowed == (role in documented), f"ROLES[{role!r}] and the documented roles disagree on {method}"
    scene = Scene(stub, redis, key_prefix, hub_name)
    try:
        if setup is not None:
            await setup(scene)
        before = await snapshot(redis, key_prefix)
        if allowed:
            await call(scene, auth(role))
        else:
            message = await rpc_error(call(scene, auth(role)), grpc.StatusCode.PERMISSION_DENIED)
            assert method in message and identity_name(role) in message, message
            assert await snapshot(redis, key_prefix) == before, f"a refused {method} changed Redis"
    finally:
        for stream in scene.streams:
            stream.cancel()


# -- task hubs ------------------------------------------------------------------------------

async def test_a_token_limited_to_a_hub_may_use_only_that_hub(stub, redis, key_prefix):
    await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=auth("admin", "a"))  # with tokens, admins make hubs
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="i", name="Orch"), metadata=auth("client-a", "a"))
    assert await status_of(stub, "i", "a") == pb.ORCHESTRATION_STATUS_PENDING
    before = await snapshot(redis, key_prefix)
    for hub in ("b", None):  # another hub; the default hub (no taskhub metadata)
        message = await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="j", name="Orch"),
                                                     metadata=auth("client-a", hub)),
                                  grpc.StatusCode.PERMISSION_DENIED)
        assert "task hub" in message, message
    assert await snapshot(redis, key_prefix) == before
    assert await status_of(stub, "j", "b") is None and await status_of(stub, "j") is None


async def test_a_worker_limited_to_a_hub_cannot_complete_work_of_another_hub(stub, redis, key_prefix):
    for hub in ("a", "b"):  # with tokens, admins make hubs
        await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=auth("admin", hub))
    own_stream, own = await claim(stub, "in-a", "a", who="worker-a")  # its own hub: allowed
    other_stream, other = await claim(stub, "in-b", "b")  # claimed by an admin on hub b
    try:
        assert other.completionToken.startswith("b|")
        before = await snapshot(redis, key_prefix)
        for hub in ("a", None):  # whatever hub the metadata names, the completion token's hub decides
            await rpc_error(stub.CompleteOrchestratorTask(done(other.completionToken), metadata=auth("worker-a", hub)),
                            grpc.StatusCode.PERMISSION_DENIED)
        assert await snapshot(redis, key_prefix) == before
        assert await status_of(stub, "in-b", "b") == pb.ORCHESTRATION_STATUS_RUNNING
        await stub.CompleteOrchestratorTask(done(own.completionToken), metadata=auth("worker-a"))
        assert await status_of(stub, "in-a", "a") == pb.ORCHESTRATION_STATUS_COMPLETED
        await stub.CompleteOrchestratorTask(done(other.completionToken), metadata=auth("admin"))  # it was valid
        assert await status_of(stub, "in-b", "b") == pb.ORCHESTRATION_STATUS_COMPLETED
        # Nor may it ask for the work of the default hub.
        await rpc_error(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=auth("worker-a")).read(),
                        grpc.StatusCode.PERMISSION_DENIED)
    finally:
        own_stream.cancel()
        other_stream.cancel()


# -- authentication -------------------------------------------------------------------------

BAD_CREDENTIALS = {
    "no header": (),
    "basic": (("authorization", "Basic " + "YWRtaW46YWRtaW4="),),
    "bearer without a token": (("authorization", "Bearer"),),
    "bearer and a space": (("authorization", "Bearer "),),
    "unknown token": (("authorization", "Bearer not-a-token-we-know"),),
    "the stored hash as the token": (("authorization", "Bearer " + hashlib.sha256(TOKEN["admin"].encode()).hexdigest()),),
    "admin token in another header": (("x-token", TOKEN["admin"]),),
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
async def test_a_missing_malformed_or_unknown_token_is_unauthenticated(stub, redis, key_prefix, credentials):
    md = BAD_CREDENTIALS[credentials]
    before = await snapshot(redis, key_prefix)
    await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="x", name="Orch"), metadata=md),
                    grpc.StatusCode.UNAUTHENTICATED)
    await rpc_error(stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=md), grpc.StatusCode.UNAUTHENTICATED)
    await rpc_error(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=md).read(), grpc.StatusCode.UNAUTHENTICATED)
    assert await snapshot(redis, key_prefix) == before
    assert await status_of(stub, "x") is None


async def test_the_scheme_is_case_insensitive(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="x", name="Orch"),
                             metadata=(("authorization", f"bearer {TOKEN['client']}"),))
    assert await status_of(stub, "x") == pb.ORCHESTRATION_STATUS_PENDING


async def test_health_and_reflection_answer_without_a_token(app, channel, stub):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "readiness", "liveness"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = [s.name async for reply in call for s in reply.list_services_response.service]
    assert SERVICE.full_name in services and "grpc.health.v1.Health" in services
    await rpc_error(stub.Hello(empty_pb2.Empty()), grpc.StatusCode.UNAUTHENTICATED)


# -- the tokens file changes ----------------------------------------------------------------

async def late_may_read(stub) -> bool:
    try:
        await stub.GetInstance(pb.GetInstanceRequest(instanceId="x"), metadata=auth("late"))
        return True
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
        return False


async def test_the_tokens_file_is_re_read_when_it_changes(stub, tokens_path):
    assert not await late_may_read(stub)
    write_tokens(tokens_path, [*IDENTITIES, "late"])
    took = await eventually(lambda: late_may_read(stub), timeout=5.0, interval=0.02)
    assert took <= 2.0, f"a token added to the file worked only after {took:.2f} s"
    assert await late_may_read(stub)

    async def refused() -> bool:
        return not await late_may_read(stub)

    write_tokens(tokens_path, IDENTITIES)
    took = await eventually(refused, timeout=5.0, interval=0.02)
    assert took <= 2.0, f"a token removed from the file still worked for {took:.2f} s"
    await stub.GetInstance(pb.GetInstanceRequest(instanceId="x"), metadata=auth("reader"))  # the others still work


# -- destructive calls are logged -----------------------------------------------------------

async def test_a_destructive_call_logs_who_made_it(stub, caplog):
    call, item = await claim(stub, "gone")
    try:
        await stub.CompleteOrchestratorTask(done(item.completionToken), metadata=auth("admin"))
    finally:
        call.cancel()
    caplog.set_level(logging.INFO, logger=INTERCEPTOR_LOGGER)

    def records(method: str) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == INTERCEPTOR_LOGGER and r.getMessage().startswith(method + " ") and "refused" not in
                r.getMessage()]

    await rpc_error(stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=auth("reader")),
                    grpc.StatusCode.PERMISSION_DENIED)
    assert records("DeleteTaskHub") == []  # refused: nothing was done

    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="gone"), metadata=auth("admin"))
    assert reply.deletedInstanceCount == 1
    await stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=auth("admin"))
    for method in ("PurgeInstances", "DeleteTaskHub"):
        logged = records(method)
        assert len(logged) == 1, (method, logged)
        assert identity_name("admin") in logged[0] and "admin" in logged[0].replace(identity_name("admin"), ""), \
            logged[0]


# -- every RPC is classified ----------------------------------------------------------------

def test_every_rpc_belongs_to_a_role_set_and_every_name_is_an_rpc():
    from scheduler.api.dapr.servicer import SERVICE as DAPR_SERVICE

    names = {m.name for m in SERVICE.methods} | {m.name for m in DAPR_SERVICE.methods}  # our port's and Dapr's
    sets = {"READ": READ, "CLIENT": CLIENT, "WORK": WORK, "ADMIN_ONLY": ADMIN_ONLY}
    unclassified = {n for n in names if not any(n in s for s in sets.values())}
    assert not unclassified, f"RPCs in no role set: {sorted(unclassified)}"
    assert names <= ROLES["admin"], f"RPCs admin may not call: {sorted(names - ROLES['admin'])}"
    for set_name, members in sets.items():
        assert members <= names, f"{set_name} names calls the service does not have: {sorted(members - names)}"
    assert READ <= CLIENT
    assert not ADMIN_ONLY & (CLIENT | WORK)


def raw(channel, method) -> object:
    path = f"/{SERVICE.full_name}/{method.name}"
    return channel.unary_stream(path) if method.server_streaming else channel.unary_unary(path)


async def outcome(channel, method, md) -> grpc.StatusCode:
    """The status of the call with an empty request (OK for a stream that sends something)."""
    try:
        call = raw(channel, method)(b"", metadata=md, timeout=0.5)
        if method.server_streaming:
            await call.read()
            call.cancel()
        else:
            await call
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_every_rpc_goes_through_authentication(app, channel):
    """A call the interceptor did not see would succeed (or fail otherwise) without a token."""
    refusals = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    for method in SERVICE.methods:
        assert await outcome(channel, method, ()) == grpc.StatusCode.UNAUTHENTICATED, method.name
        code = await outcome(channel, method, auth("reader"))
        assert (code not in refusals) == (method.name in READ), (method.name, code)
    for method in SERVICE.methods:  # DeleteTaskHub among them: last
        code = await outcome(channel, method, auth("admin"))
        assert code not in refusals, (method.name, code)


# -- TLS certificates change ----------------------------------------------------------------

def peer_serial(port: int, certs: Certs) -> int:
    """A fresh TLS handshake with the server; the serial of the certificate it presents."""
    context = ssl.create_default_context(cafile=str(certs.ca.cert))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


async def test_the_server_certificate_is_re_read_when_its_files_change(start_app, redis_url, key_prefix, hub_name,
                                                                       certs, tmp_path):
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(certs.server.cert_bytes())
    key_file.write_bytes(certs.server.key_bytes())
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    assert await asyncio.to_thread(peer_serial, app.port, certs) == certs.server.serial
    assert await asyncio.to_thread(peer_serial, app.port, certs) == certs.server.serial

    rotated = certs.new_server_cert("rotated")
    assert rotated.serial != certs.server.serial
    cert_file.write_bytes(rotated.cert_bytes())  # overwritten in place, as a file a tool renews
    key_file.write_bytes(rotated.key_bytes())

    async def presents_the_new_one() -> bool:
        return await asyncio.to_thread(peer_serial, app.port, certs) == rotated.serial

    await eventually(presents_the_new_one, timeout=5.0, interval=0.05)
    # And gRPC over the new certificate works.
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.cert_bytes())
    async with grpc.aio.secure_channel(f"localhost:{app.port}", credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await pb_grpc.TaskHubSidecarServiceStub(channel).StartInstance(
            pb.CreateInstanceRequest(instanceId="over-tls", name="Orch"), timeout=5)


# -- revocation bites within seconds ---------------------------------------------------------

def write_entries(path, changed: dict[str, tuple[str, list[str]] | None]) -> None:
    """The tokens file of IDENTITIES with some changed: name -> (role, hubs), or None to remove it."""
    entries = []
    for name, (role, hubs) in IDENTITIES.items():
        if name in changed:
            if changed[name] is None:
                continue
            role, hubs = changed[name]
        entries.append({"name": identity_name(name), "sha256": hashlib.sha256(TOKEN[name].encode()).hexdigest(),
                        "role": role, "hubs": hubs})
    tmp = f"{path}.new"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"tokens": entries}, f)
    os.replace(tmp, path)


async def stream_end(call, timeout: float) -> tuple[grpc.StatusCode, str]:
    """How a work stream ends (within ``timeout``); it must hand out no work item meanwhile."""
    async def read() -> tuple[grpc.StatusCode, str]:
        while True:
            try:
                item = await call.read()
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            if item is grpc.aio.EOF:
                return grpc.StatusCode.OK, ""
            assert item.HasField("healthPing"), f"a revoked stream was handed {item}"
    return await asyncio.wait_for(read(), timeout)


async def handed_back_at_once(stub, iid: str, hub: str | None = None) -> float:
    """How long until the item is handed to another stream: far less than a lease (30 s) when its stream
    handed it back."""
    started = asyncio.get_running_loop().time()
    call = stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=auth("admin", hub))
    try:
        item = await next_work(call, timeout=10)
        assert item.orchestratorRequest.instanceId == iid
    finally:
        call.cancel()
    return asyncio.get_running_loop().time() - started


# who loses what -> (the worker, its hub, the change of the tokens file, the status its stream ends with)
REVOCATIONS = {
    "token removed": ("worker", None, {"worker": None}, grpc.StatusCode.UNAUTHENTICATED),
    "role lost": ("worker", None, {"worker": ("reader", ["*"])}, grpc.StatusCode.PERMISSION_DENIED),
    "hub lost": ("worker-a", "a", {"worker-a": ("worker", ["b"])}, grpc.StatusCode.PERMISSION_DENIED),
}


@pytest.mark.parametrize("case", REVOCATIONS)
async def test_a_work_stream_whose_caller_loses_access_ends_at_once_and_its_work_goes_back(stub, tokens_path,
                                                                                           case):
    who, hub, change, code = REVOCATIONS[case]
    if hub is not None:  # with tokens, an admin makes the task hub
        await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=auth("admin", hub))
    # Another caller's stream, full (it takes one orchestration at a time): not touched by the change.
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="kept", name="Orch"), metadata=auth("admin", hub))
    kept_call = stub.GetWorkItems(pb.GetWorkItemsRequest(maxConcurrentOrchestrationWorkItems=1),
                                  metadata=auth("admin", hub))
    assert (await next_work(kept_call)).orchestratorRequest.instanceId == "kept"
    call, item = await claim(stub, "revoked", hub, who=who)
    try:
        changed = asyncio.get_running_loop().time()
        write_entries(tokens_path, change)
        got, details = await stream_end(call, timeout=5.0)
        took = asyncio.get_running_loop().time() - changed
        assert got == code, (got, details)
        assert TOKEN[who] not in details
        assert took < 5.0
        assert await handed_back_at_once(stub, "revoked", hub) < 5.0  # not after the 30 s lease
        assert not kept_call.done()
    finally:
        call.cancel()
        kept_call.cancel()


async def test_a_wait_whose_caller_loses_access_ends_at_once(app, stub, tokens_path):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="w", name="Orch"), metadata=auth("admin"))
    waiting = asyncio.ensure_future(stub.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="w"),
                                                                   metadata=auth("reader"), timeout=30))
    other = asyncio.ensure_future(stub.WaitForInstanceCompletion(pb.GetInstanceRequest(instanceId="w"),
                                                                 metadata=auth("client"), timeout=30))
    try:
        async def both_waiting() -> bool:
            return app.interceptor.authenticator.long_calls == 2

        await eventually(both_waiting, timeout=5)
        write_entries(tokens_path, {"reader": None})
        await rpc_error(asyncio.wait_for(waiting, 5.0), grpc.StatusCode.UNAUTHENTICATED)
        assert not other.done()
    finally:
        waiting.cancel()
        other.cancel()


async def test_a_deleted_tokens_file_refuses_every_token_within_seconds(stub, tokens_path):
    call, _ = await claim(stub, "orphan", who="worker")
    try:
        deleted = asyncio.get_running_loop().time()
        os.remove(tokens_path)
        got, _ = await stream_end(call, timeout=3.0)
        assert got == grpc.StatusCode.UNAUTHENTICATED
        assert asyncio.get_running_loop().time() - deleted < 3.0
        await rpc_error(stub.GetInstance(pb.GetInstanceRequest(instanceId="orphan"), metadata=auth("admin")),
                        grpc.StatusCode.UNAUTHENTICATED)
    finally:
        call.cancel()
