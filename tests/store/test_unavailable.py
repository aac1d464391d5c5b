"""Every store operation turns "Redis did not answer" into StoreUnavailable."""
from __future__ import annotations

import fakeredis
import pytest
import redis.asyncio as aioredis

from scheduler import errors
from scheduler.store import keys
from scheduler.store.pipelining import PipelinedConnection
from scheduler.store import Store
from scheduler.testing import free_port
from store_helpers import new


@pytest.fixture(params=["closed-port", "closed-port-pipelined", "fakeredis-disconnected"])
async def dead_store(request):
    if request.param.startswith("closed-port"):
        # Nothing listens on a port that was free a moment ago: connections are refused.
        url = f"redis://127.0.0.1:{free_port()}/0"
        fast = PipelinedConnection(url) if request.param.endswith("pipelined") else None
        store = Store(aioredis.Redis.from_url(url, socket_connect_timeout=1), "dead", 4, fast=fast)
    else:
        server = fakeredis.FakeServer()
        server.connected = False  # fakeredis then emulates a connection error on every command
        store = Store(fakeredis.FakeAsyncRedis(server=server), "dead", default_partitions=4)
    yield store
    await store.aclose()


OPERATIONS = {
    "ping": lambda s, h: s.ping(),
    "server_time_ms": lambda s, h: s.server_time_ms(),
    "ensure_hub": lambda s, h: s.ensure_hub("h"),
    "known_hubs": lambda s, h: s.known_hubs(),
    "create_task_hub": lambda s, h: s.create_task_hub("h", recreate_if_exists=False),
    "delete_task_hub": lambda s, h: s.delete_task_hub("h"),
    "create_instance": lambda s, h: s.create_instance(h, new("i")),
    "get_instance": lambda s, h: s.get_instance(h, "i"),
    "promote_due": lambda s, h: s.promote_due(h, 10),
    "hub_stats": lambda s, h: s.hub_stats(h),
    "load_scripts": lambda s, h: s.load_scripts(),
}


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_unreachable_redis_raises_store_unavailable(dead_store, operation):
    with pytest.raises(errors.StoreUnavailable, match="Redis is unavailable"):
        await OPERATIONS[operation](dead_store, keys.HubKeys("dead", "h", 4))
