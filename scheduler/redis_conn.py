"""Connect to Redis: a URL, a Redis Cluster, or the embedded in-process store."""
from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

log = logging.getLogger(__name__)

EMBEDDED_WARNING = (
    "No --redis-url given: running on the EMBEDDED in-process store (fakeredis). "
    "Nothing survives a restart and replicas do not share it. For anything but a "
    "try-out, pass --redis-url redis://host:6379/0."
)

# Fail fast instead of hanging a request when Redis is gone; redis-py reconnects
# by itself on the next command once Redis is back.
_CLIENT_OPTIONS = dict(socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=15)


def connect_fast(url: str | None, cluster: bool = False):
    """The auto-pipelining connection for the request path, where the deployment allows one."""
    if url is None or cluster:
        return None
    from .pipelining import PipelinedConnection

    return PipelinedConnection(url)


def connect(url: str | None, cluster: bool = False):
    """Return an asyncio Redis client for the URL (or the embedded store when ``url`` is None)."""
    if url is None:
        import fakeredis  # imported lazily: only the embedded mode needs it

        log.warning(EMBEDDED_WARNING)
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    if cluster:
        return RedisCluster.from_url(url, **_CLIENT_OPTIONS)
    return aioredis.Redis.from_url(url, **_CLIENT_OPTIONS)
