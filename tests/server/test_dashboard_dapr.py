"""The dashboard shows the Dapr twins of the task hubs (instances started on --dapr-port) as entries of their
own (``?hub=NAME&flavour=dapr``), through the Dapr port's path: tokens name the hub without the suffix,
and a twin is never reachable by its raw ``~`` name."""
from __future__ import annotations

import hashlib
import json

import aiohttp
import grpc
import pytest

from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler._proto.dapr import orchestrator_service_pb2 as dpb
from scheduler.api.dapr.servicer import SUFFIX, WIRE_NAME
from scheduler.testing import free_port
from server_helpers import PARTITIONS

TOKENS = {"reader": ("reader", "HUB"), "client": ("client", "HUB"), "stranger": ("admin", "other-hub")}


def _bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {name}-token"}


async def test_dapr_instances_have_their_own_entry_and_the_dapr_ports_rules(start_app, redis_url, key_prefix,
                                                                            hub_name, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [
        {"name": name, "sha256": hashlib.sha256(f"{name}-token".encode()).hexdigest(), "role": role,
         "hubs": [hub_name if hub == "HUB" else hub]} for name, (role, hub) in TOKENS.items()]}))
    port = free_port()
    app = await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                          auth_tokens_file=str(tokens), dashboard_port=port, dapr_port=0)
    metadata = (("authorization", "Bearer client-token"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.dapr_port}") as dapr_channel, \
            grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        start_dapr = dapr_channel.unary_unary(f"/{WIRE_NAME}/StartInstance",
                                              request_serializer=dpb.CreateInstanceRequest.SerializeToString,
                                              response_deserializer=dpb.CreateInstanceResponse.FromString)
        await start_dapr(dpb.CreateInstanceRequest(instanceId="dapr-order", name="DaprCheckout"), metadata=metadata)
        rewind_dapr = dapr_channel.unary_unary(f"/{WIRE_NAME}/RewindInstance",
                                               request_serializer=dpb.RewindInstanceRequest.SerializeToString,
                                               response_deserializer=dpb.RewindInstanceResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the Dapr port's own refusal, as the dashboard's below
            await rewind_dapr(dpb.RewindInstanceRequest(instanceId="dapr-order"), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "rewind" in refused.value.details()
        await pb_grpc.TaskHubSidecarServiceStub(channel).StartInstance(
            pb.CreateInstanceRequest(instanceId="our-order", name="Checkout"), metadata=metadata)

    url, dapr = f"http://127.0.0.1:{port}", {"hub": hub_name, "flavour": "dapr"}
    async with aiohttp.ClientSession() as session:
        async def get(path: str, token: str, **params) -> tuple[int, dict]:
            async with session.get(url + path, headers=_bearer(token), params=params) as reply:
                return reply.status, await reply.json()

        async def post(path: str, token: str, **params) -> tuple[int, dict]:
            async with session.post(url + path, headers=_bearer(token), params=params, json={}) as reply:
                return reply.status, await reply.json()

        # The picker: our hub and its Dapr twin, both by the name tokens use; never the raw twin name.
        assert await get("/api/hubs", "reader") == (200, {"hubs": [hub_name], "daprHubs": [hub_name]})
        assert await get("/api/hubs", "stranger") == (200, {"hubs": [], "daprHubs": []})

        # Each entry shows its own flavour's instances, through the calls of its port.
        status, page = await get("/api/instances", "reader", **dapr)
        assert status == 200 and [(i["id"], i["name"]) for i in page["instances"]] == [("dapr-order", "DaprCheckout")]
        status, page = await get("/api/instances", "reader", hub=hub_name)
        assert status == 200 and [i["id"] for i in page["instances"]] == ["our-order"]
        status, stats = await get("/api/stats", "reader", **dapr)
        assert status == 200 and stats["statuses"] == {"PENDING": 1} and stats["flavour"] == "dapr"
        status, one = await get("/api/instances/dapr-order", "reader", **dapr)
        assert status == 200 and one["instance"]["name"] == "DaprCheckout" and "timeline" in one
        assert (await get("/api/instances/dapr-order", "reader", hub=hub_name))[0] == 404
        assert (await get("/api/instances/dapr-order/payload/input", "reader", **dapr))[0] == 200
        for path in ("/api/entities", "/api/schedules"):
            status, body = await get(path, "reader", **dapr)
            assert status == 200 and body["entities"] == [], (path, body)

        # Tokens apply by the visible name, role and hub, as on the Dapr port.
        for path in ("/api/instances", "/api/stats", "/api/instances/dapr-order", "/api/entities"):
            assert (await get(path, "stranger", **dapr))[0] == 403, path
        assert (await post("/api/instances/dapr-order/suspend", "reader", **dapr))[0] == 403
        assert await post("/api/instances/dapr-order/suspend", "client", **dapr) == (200, {"ok": True})
        assert (await get("/api/instances/dapr-order", "reader", **dapr))[1]["instance"]["status"] == "SUSPENDED"
        assert (await get("/api/instances/our-order", "reader", hub=hub_name))[1]["instance"]["status"] == "PENDING"
        # What Dapr's workers cannot take is refused, as on the Dapr port.
        for action in ("rewind", "restart"):
            status, body = await post(f"/api/instances/dapr-order/{action}", "client", **dapr)
            assert status == 409 and "Dapr" in body["error"], (action, body)

        # A twin is never reachable by its raw name, with or without the flavour; an unknown flavour is refused.
        for params in ({"hub": hub_name + SUFFIX}, {"hub": hub_name + SUFFIX, "flavour": "dapr"}):
            for path in ("/api/instances", "/api/stats", "/api/instances/dapr-order"):
                status, body = await get(path, "client", **params)
                assert status == 400 and "task hub name" in body["error"], (path, params, body)
        status, body = await get("/api/instances", "reader", hub=hub_name, flavour="dapr2")
        assert status == 400 and "flavour" in body["error"]
