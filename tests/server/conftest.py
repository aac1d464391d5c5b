"""The servicer over a real port: an in-process App on 127.0.0.1:0 against the session's redis-server."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import redis.asyncio as aioredis

from scheduler._proto import orchestrator_service_pb2_grpc as pb_grpc
from scheduler.app import App
from scheduler.config import Config
from server_helpers import MAX_PAYLOAD, PARTITIONS


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Awaitable[App]]]:
    """Start Apps with a Config built from keyword arguments; every App is stopped at teardown."""
    apps: list[App] = []

    async def start(**kwargs) -> App:
        app = App(Config(port=0, **kwargs))
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in reversed(apps):
        await app.stop(grace=1)


@pytest.fixture
async def app(start_app, redis_url, key_prefix, hub_name) -> App:
    return await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name,
                           partitions=PARTITIONS, max_payload_bytes=MAX_PAYLOAD)


@pytest.fixture
async def channel(app) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel) -> pb_grpc.TaskHubSidecarServiceStub:
    return pb_grpc.TaskHubSidecarServiceStub(channel)


@pytest.fixture
async def redis(redis_url) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own, to look at what the server wrote."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
