"""Connections to Redis: a URL, a Redis Cluster or the embedded in-process store, and the batcher.

The request path shares round trips: on a standalone Redis through the auto-pipelined
connection (pipelining.py), elsewhere through :class:`Batcher`, which coalesces the
commands issued during one event-loop turn into one non-transactional pipeline (every
command keeps its own atomicity; a script is atomic by itself).
"""
from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger(__name__)

EMBEDDED_WARNING = (
    "No --redis-url given: running on the EMBEDDED in-process store (fakeredis). "
    "Nothing survives a restart and replicas do not share it. For anything but a "
    "try-out, pass --redis-url redis://host:6379/0."
)

# Fail fast instead of hanging a request when Redis is gone; redis-py reconnects
# by itself on the next command once Redis is back. No automatic retries: a script
# retried after its reply was lost could be applied twice.
_CLIENT_OPTIONS = dict(socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=2)
POOL_TIMEOUT = 5.0  # seconds a call waits for a free connection before it is refused


def connect_fast(url: str | None, cluster: bool = False):
    """The auto-pipelining connection for the request path, where the deployment allows one."""
    if url is None or cluster:
        return None
    from .pipelining import PipelinedConnection

    return PipelinedConnection(url)


def connect(url: str | None, cluster: bool = False, max_connections: int = 32):
    """An asyncio Redis client for the URL (or the embedded store when ``url`` is None) with at most
    ``max_connections`` connections, however many task hubs and calls there are: a call waits
    (up to POOL_TIMEOUT) for a free connection rather than failing."""
    if url is None:
        import fakeredis  # imported lazily: only the embedded mode needs it

        log.warning(EMBEDDED_WARNING)
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    if cluster:
        client = RedisCluster.from_url(url, max_connections=max_connections, retry=Retry(NoBackoff(), 0),
                                       **_CLIENT_OPTIONS)
        return Gated(client, max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_TIMEOUT,
                                                    retry=None, **_CLIENT_OPTIONS)
    return aioredis.Redis.from_pool(pool)


class Gated:
    """A Redis Cluster client whose calls wait for one of ``limit`` slots (redis-py's cluster pools
    refuse a call past their size instead of waiting). Everything else passes through."""

    def __init__(self, client: RedisCluster, limit: int) -> None:
        self._client = client
        self._slots = asyncio.Semaphore(limit)

    @property
    def client(self) -> RedisCluster:
        return self._client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name in ("pipeline", "pubsub", "register_script", "scan_iter", "get_default_node", "initialize") or \
                not asyncio.iscoroutinefunction(attr):
            return _GatedPipelineFactory(attr, self._slots) if name == "pipeline" else attr

        async def gated(*args, **kwargs):
            async with self._slots:
                return await attr(*args, **kwargs)
        return gated


class _GatedPipelineFactory:
    def __init__(self, make, slots: asyncio.Semaphore) -> None:
        self._make, self._slots = make, slots

    def __call__(self, *args, **kwargs):
        return _GatedPipeline(self._make(*args, **kwargs), self._slots)


class _GatedPipeline:
    def __init__(self, pipe, slots: asyncio.Semaphore) -> None:
        self._pipe, self._slots = pipe, slots

    async def __aenter__(self):
        await self._pipe.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._pipe.__aexit__(*exc)

    def __getattr__(self, name: str):
        return getattr(self._pipe, name)

    async def execute(self, *args, **kwargs):
        async with self._slots:
            return await self._pipe.execute(*args, **kwargs)


class Batcher:
    def __init__(self, redis, max_batch: int = 512) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()

    def execute(self, *args) -> asyncio.Future:
        """Queue one command; the future resolves to its reply (or its error)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        return future

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the round trip failed: every command in it failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), reply in zip(batch, replies):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
