"""The store suite runs against every backend: a real redis-server (through redis-py alone, and with the
auto-pipelined request connection the App uses on a standalone Redis), fakeredis (with Lua), and a
three-node Redis Cluster that the session starts (it alone catches a script touching another slot).

Each test gets a fresh key prefix and task hub, and a hub with P > 1 partitions.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from scheduler.store import keys
from scheduler.store.pipelining import PipelinedConnection
from scheduler.store import Store
from scheduler.testing import redis_cluster
from store_helpers import PARTITIONS


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A three-node Redis Cluster for the session: the only backend that rejects cross-slot scripts."""
    with redis_cluster() as url:
        yield url


@pytest.fixture(params=["redis", "redis-pipelined", "fakeredis", "cluster"])
async def make_store(request, key_prefix) -> AsyncIterator[Callable[..., Store]]:
    """A factory of Stores, each on its own connections to one backend; all closed at teardown."""
    stores: list[Store] = []
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def client():
            return fakeredis.FakeAsyncRedis(server=server)

        def fast():
            return None
    elif request.param == "cluster":
        url = request.getfixturevalue("cluster_url")

        def client():
            return RedisCluster.from_url(url)

        def fast():
            return None
    else:
        url = request.getfixturevalue("redis_url")

        def client():
            return aioredis.Redis.from_url(url)

        def fast():
            return PipelinedConnection(url) if request.param == "redis-pipelined" else None

    def make(prefix: str = key_prefix, default_partitions: int = PARTITIONS, max_hubs: int = 1000) -> Store:
        stores.append(Store(client(), prefix, default_partitions=default_partitions, fast=fast(), max_hubs=max_hubs))
        return stores[-1]

    yield make
    for store in stores:
        await store.aclose()


@pytest.fixture
def store(make_store) -> Store:
    return make_store()


@pytest.fixture
def redis(store) -> aioredis.Redis:
    """The store's plain client, to look at (and prepare) what is in Redis."""
    return store.redis


@pytest.fixture
async def hub(store, hub_name) -> keys.HubKeys:
    return await store.ensure_hub(hub_name)
