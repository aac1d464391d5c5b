"""Who makes task hubs: with tokens in use only an admin's CreateTaskHub does (a call naming an unknown hub
is NOT_FOUND and writes nothing); without tokens a hub appears on first use. --max-task-hubs bounds them."""
from __future__ import annotations

import hashlib
import json
import secrets

import grpc
import pytest

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from server_helpers import PARTITIONS, prefix_keys, rpc_error, snapshot

TOKENS = {role: f"{role}-{secrets.token_hex(16)}" for role in ("client", "worker", "admin")}


def md(role: str | None, hub: str) -> tuple[tuple[str, str], ...]:
    return ((("authorization", f"Bearer {TOKENS[role]}"),) if role else ()) + (("taskhub", hub),)


@pytest.fixture
def tokens_path(tmp_path) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [
        {"name": role, "sha256": hashlib.sha256(token.encode()).hexdigest(), "role": role, "hubs": ["*"]}
        for role, token in TOKENS.items()]}))
    return str(path)


async def stub_of(app) -> tuple[grpc.aio.Channel, pb_grpc.TaskHubSidecarServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return channel, pb_grpc.TaskHubSidecarServiceStub(channel)


async def test_with_tokens_an_unknown_hub_is_refused_until_an_admin_creates_it(
        start_app, redis, redis_url, key_prefix, hub_name, tokens_path):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          auth_tokens_file=tokens_path)
    channel, stub = await stub_of(app)
    async with channel:
        before = await snapshot(redis, key_prefix)
        start = pb.CreateInstanceRequest(instanceId="i1", name="o")
        message = await rpc_error(stub.StartInstance(start, metadata=md("client", "fresh")), grpc.StatusCode.NOT_FOUND)
        assert "'fresh'" in message and "CreateTaskHub" in message and "admin" in message
        await rpc_error(anext(aiter(stub.GetWorkItems(pb.GetWorkItemsRequest(), metadata=md("worker", "other")))),
                        grpc.StatusCode.NOT_FOUND)
        assert await snapshot(redis, key_prefix) == before  # no key at all, not even a counter
        await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=md("admin", "fresh"))
        assert (await stub.StartInstance(start, metadata=md("client", "fresh"))).instanceId == "i1"
        got = await stub.GetInstance(pb.GetInstanceRequest(instanceId="i1"), metadata=md("client", "fresh"))
        assert got.exists


async def test_without_tokens_a_hub_appears_on_first_use(start_app, redis, redis_url, key_prefix, hub_name):
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
    channel, stub = await stub_of(app)
    async with channel:
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="i1", name="o"), metadata=md(None, "fresh"))
        assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="i1"), metadata=md(None, "fresh"))).exists


async def test_max_task_hubs_refuses_one_more_and_writes_nothing(start_app, redis, redis_url, key_prefix, hub_name):
    # the default hub and one more fill the bound of 2
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          max_task_hubs=2)
    channel, stub = await stub_of(app)
    async with channel:
        await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=md(None, "second"))
        before = await snapshot(redis, key_prefix)
        message = await rpc_error(stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=md(None, "third")),
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "'third'" in message and "--max-task-hubs" in message
        await rpc_error(stub.StartInstance(pb.CreateInstanceRequest(instanceId="i", name="o"),
                                           metadata=md(None, "fourth")), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert await snapshot(redis, key_prefix) == before
        # hubs that exist are used as before; after a deletion there is room again
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId="i", name="o"), metadata=md(None, "second"))
        await stub.DeleteTaskHub(pb.DeleteTaskHubRequest(), metadata=md(None, "second"))
        await stub.CreateTaskHub(pb.CreateTaskHubRequest(), metadata=md(None, "third"))
        assert {k for k in await prefix_keys(redis, key_prefix) if k.endswith(":meta")} == {
            f"{key_prefix}:{{{hub_name}}}:meta", f"{key_prefix}:{{third}}:meta"}
