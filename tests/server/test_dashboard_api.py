"""The dashboard's JSON endpoints in-process against the session's redis-server: what a page costs Redis
(counted with INFO commandstats around each request, on a replica whose background loops are not
started, so every command counted is the page's), HTTPS with the gRPC port's certificates (re-read
when they change), the port flag, and bad input."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import ssl
import time

import aiohttp
import pytest

from certs import Certs, certs  # noqa: F401 - certs is a fixture
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.api.auth import Authenticator
from scheduler.api.dashboard import Dashboard
from scheduler.api.dashboard.calls import Calls
from scheduler.api.interceptors import CallInterceptor
from scheduler.api import translate
from scheduler.api.servicer import Servicer
from scheduler.app import App, StartupError
from scheduler.config import Config
from scheduler.engine import Engine
from scheduler.store import Store
from scheduler.testing import free_port
from scheduler.store.connection import connect
from server_helpers import PARTITIONS, eventually

ROWS = 20
# "A handful of Redis commands per row shown": a list page reads its candidates' hashes and start events
# (counted inside scripts too) after one range read per partition.
PER_ROW, PER_PARTITION, FIXED = 3, 2, 4


async def _calls(redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


@pytest.fixture
async def quiet_dashboard(redis_url, key_prefix, hub_name):
    """A dashboard over a store and engine whose loops never start (no promoter, relay, sweep)."""
    config = Config(port=0, dashboard_port=0, redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name,
                    partitions=PARTITIONS)
    redis = connect(redis_url)
    store = Store(redis, key_prefix, PARTITIONS)
    await store.load_scripts()
    engine = Engine.build(store, config)
    servicer = Servicer(engine, config)
    dashboard = Dashboard(Calls(servicer, CallInterceptor(Authenticator(None), hub_name, count=False)), engine,
                          config)
    port = await dashboard.start()
    yield f"http://127.0.0.1:{port}", servicer, engine
    await dashboard.stop()
    await engine.hubs.stop()
    await store.aclose()


async def _get(session: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, dict]:
    async with session.get(url, **kwargs) as reply:
        return reply.status, await reply.json()


async def test_a_page_costs_a_handful_of_redis_commands_per_row(quiet_dashboard, redis, hub_name):
    url, servicer, engine = quiet_dashboard
    hub = await engine.store.ensure_hub(hub_name)  # not engine.hubs.get: that would start the hub's loops
    later = pb.CreateInstanceRequest().scheduledStartTimestamp
    later.FromMilliseconds(int(time.time() * 1000) + 3_600_000)
    for n in range(2 * ROWS):
        request = pb.CreateInstanceRequest(instanceId=f"order-{n:03d}", name="Checkout")
        if n % 2:
            request.scheduledStartTimestamp.CopyFrom(later)
        await engine.orchestrations.start(hub, translate.new_instance(request, request.instanceId))
    async with aiohttp.ClientSession() as session:
        before = await _calls(redis)
        status, page = await _get(session, f"{url}/api/instances?pageSize={ROWS}")
        list_cost = await _calls(redis) - before
        assert status == 200 and len(page["instances"]) == ROWS and page["next"]
        assert list_cost <= PER_ROW * ROWS + PER_PARTITION * PARTITIONS + FIXED, list_cost

        before = await _calls(redis)
        status, second = await _get(session, f"{url}/api/instances", params={"pageSize": ROWS, "token": page["next"]})
        assert status == 200 and len(second["instances"]) == ROWS and second["next"] is None
        assert not {i["id"] for i in page["instances"]} & {i["id"] for i in second["instances"]}
        assert await _calls(redis) - before <= PER_ROW * ROWS + PER_PARTITION * PARTITIONS + FIXED

        before = await _calls(redis)
        status, one = await _get(session, f"{url}/api/instances/order-001")
        assert status == 200 and one["instance"]["status"] == "PENDING" and one["instance"]["scheduledStartMs"]
        assert await _calls(redis) - before <= 6

        before = await _calls(redis)
        status, stats = await _get(session, f"{url}/api/stats")
        assert status == 200 and stats["statuses"] == {"PENDING": 2 * ROWS} and stats["due"] == ROWS
        assert stats["ready"] == ROWS and stats["promotionLagMs"] == 0 and stats["oldestReadyAgeMs"] >= 0
        assert await _calls(redis) - before <= 6 * PARTITIONS + 1  # one pipelined round trip, and TIME

        status, pending = await _get(session, f"{url}/api/instances?status=PENDING&prefix=order-00")
        assert status == 200 and sorted(i["id"] for i in pending["instances"]) == [f"order-00{n}" for n in range(10)]
    print(f"\nRedis commands for a list page of {ROWS} rows ({PARTITIONS} partitions): {list_cost}")


async def test_bad_input_is_a_clear_400_and_writes_nothing(quiet_dashboard, redis, key_prefix, caplog):
    url, _, _ = quiet_dashboard
    async with aiohttp.ClientSession() as session:
        for path, words in (("/api/instances?status=DONE", "unknown status"),
                            ("/api/instances?createdFrom=yesterday", "createdFrom must be an integer"),
                            ("/api/instances?token=garbage", "continuationToken"),
                            ("/api/instances?hub=no*globs", "task hub name"),
                            ("/api/instances/x/payload/secrets", "no payload")):
            status, body = await _get(session, url + path)
            assert status == 400 and words in body["error"], (path, body)
        async with session.post(f"{url}/api/instances/x/raise-event", data=b"[1]") as reply:
            assert reply.status == 400 and "JSON object" in (await reply.json())["error"]
        async with session.post(f"{url}/api/instances/x/raise-event", data=b"x" * (1024 * 1024 + 1)) as reply:
            assert reply.status == 413
        caplog.set_level(logging.INFO, "scheduler.api.interceptors")
        async with session.post(f"{url}/api/instances/missing/terminate", json={"reason": "r"}) as reply:
            assert reply.status == 404
    # A destructive call made from the dashboard is audited as any other, naming the dashboard as its peer.
    assert any("TerminateInstance on task hub" in r.getMessage() and "peer dashboard 127.0.0.1" in r.getMessage()
               and r.getMessage().endswith("NOT_FOUND") for r in caplog.records), caplog.text
    assert not [k async for k in redis.scan_iter(match=f"{key_prefix}:*inst*")]


async def test_https_with_the_grpc_certificates_re_read_when_they_change(start_app, redis_url, key_prefix, hub_name,
                                                                         certs: Certs, tmp_path):
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(certs.server.cert_bytes())
    key_file.write_bytes(certs.server.key_bytes())
    port = free_port()
    await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                    tls_cert_file=str(cert_file), tls_key_file=str(key_file), dashboard_port=port)
    trusted = ssl.create_default_context(cafile=str(certs.ca.cert))
    async with aiohttp.ClientSession() as session:
        status, body = await _get(session, f"https://localhost:{port}/api/session", ssl=trusted)
        assert status == 200 and body["defaultHub"] == hub_name
        with pytest.raises(aiohttp.ClientError):  # no plaintext on the HTTPS port
            await _get(session, f"http://127.0.0.1:{port}/api/session")
    assert await asyncio.to_thread(_peer_serial, port, certs) == certs.server.serial
    rotated = certs.new_server_cert("dashboard")
    cert_file.write_bytes(rotated.cert_bytes())
    key_file.write_bytes(rotated.key_bytes())

    async def presents_the_new_one() -> bool:
        return await asyncio.to_thread(_peer_serial, port, certs) == rotated.serial

    await eventually(presents_the_new_one, timeout=5.0, interval=0.05)


async def test_a_taken_dashboard_port_is_one_line_naming_the_flag(redis_url, key_prefix, hub_name):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = App(Config(port=0, dashboard_port=taken.getsockname()[1], redis_url=redis_url, key_prefix=key_prefix,
                         task_hub=hub_name, partitions=PARTITIONS))
        with pytest.raises(StartupError, match=r"--dashboard-port \(DT_DASHBOARD_PORT\): cannot listen on 127\.0\.0\.1"):
            await app.start()
        await app.store.aclose()


def test_the_dashboard_port_with_processes_must_be_named():
    with pytest.raises(ValueError, match="--dashboard-port"):
        Config(dashboard_port=0, processes=2, redis_url="redis://127.0.0.1:1")


def _peer_serial(port: int, certs: Certs) -> int:
    context = ssl.create_default_context(cafile=str(certs.ca.cert))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


async def test_with_tokens_who_asks_comes_first(start_app, redis_url, key_prefix, hub_name, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "viewer", "sha256": hashlib.sha256(b"viewer-token").hexdigest(),
                                              "role": "reader", "hubs": [hub_name]}]}))
    port = free_port()
    await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS,
                    auth_tokens_file=str(tokens), dashboard_port=port)
    url, viewer = f"http://127.0.0.1:{port}", {"Authorization": "Bearer viewer-token"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/") as reply:  # the page is a shell: no data in it
            assert reply.status == 200 and hub_name not in await reply.text()
        assert (await _get(session, f"{url}/api/instances?status=DONE"))[0] == 401  # not 400: nothing before who
        assert (await _get(session, f"{url}/api/instances?status=DONE", headers=viewer))[0] == 400
        status, session_info = await _get(session, f"{url}/api/session", headers=viewer)
        assert status == 200 and (session_info["role"], session_info["hubs"]) == ("reader", [hub_name])
        assert "TerminateInstance" not in session_info["methods"]
        assert (await _get(session, f"{url}/api/hubs", headers=viewer))[1]["hubs"] == [hub_name]
        assert (await _get(session, f"{url}/api/stats?hub=other-hub", headers=viewer))[0] == 403
        async with session.post(f"{url}/api/instances/x/terminate", json={}, headers=viewer) as reply:
            assert reply.status == 403 and "TerminateInstance" in (await reply.json())["error"]


async def test_the_page_carries_its_first_answers_escaped(quiet_dashboard, hub_name):
    url, _, engine = quiet_dashboard
    hub = await engine.store.ensure_hub(hub_name)
    hostile = "</script><script>alert(1)</script>"
    await engine.orchestrations.start(hub, translate.new_instance(pb.CreateInstanceRequest(name=hostile), "x<y"))
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/") as reply:
            html = await reply.text()
            assert reply.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "alert(1)" in html and hostile not in html and "x<y" not in html  # "<" travels as \u003c
    preload = json.loads(html.split('<script type="application/json" id="preload">', 1)[1].split("</script>", 1)[0])
    assert [i["name"] for i in preload["instances"]["body"]["instances"]] == [hostile]
    assert preload["session"]["status"] == 200 and preload["stats"]["body"]["statuses"] == {"PENDING": 1}
