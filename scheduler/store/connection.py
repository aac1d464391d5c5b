"""Connections to Redis: a URL, a Redis Cluster or the embedded in-process store, and the batcher.

The request path shares round trips: on a standalone Redis through the auto-pipelined
connection (pipelining.py), elsewhere through :class:`Batcher`, which coalesces the
commands issued during one event-loop turn into one non-transactional pipeline (every
command keeps its own atomicity; a script is atomic by itself).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from ..config import Config, sentinel_addresses
from .pipelining import NotReplicated, not_replicated_message

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


@dataclass(frozen=True)
class Sentinels:
    """Where the primary is: the Sentinels (host, port) that monitor it under ``master``, and how to log
    in to them (their own user and password; TLS as the Redis URL says)."""

    addresses: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def of(cls, config: Config) -> Sentinels | None:
        if not config.redis_sentinels:
            return None
        return cls(tuple(sentinel_addresses(config.redis_sentinels)), config.redis_sentinel_master,
                   config.redis_sentinel_username, config.sentinel_password)

    def manager(self, url: str) -> Sentinel:
        """A redis-py Sentinel manager: data connections log in and use TLS as ``url`` says (its host and
        port are not used), the Sentinels with their own credentials and the URL's TLS options."""
        options = {k: v for k, v in parse_url(url).items() if k not in ("host", "port", "connection_class")}
        tls = {k: v for k, v in options.items() if k.startswith("ssl_")}
        if url.startswith("rediss://"):
            options["ssl"] = True
            tls["ssl"] = True
        sentinel_options = dict(socket_connect_timeout=_CLIENT_OPTIONS["socket_connect_timeout"],
                                socket_timeout=_CLIENT_OPTIONS["socket_timeout"], **tls)
        if self.password is not None:
            sentinel_options["password"] = self.password
        if self.username is not None:
            sentinel_options["username"] = self.username
        return Sentinel(list(self.addresses), sentinel_kwargs=sentinel_options, **options)

    async def primary(self, manager: Sentinel) -> tuple[str, int]:
        """The primary's address as the Sentinels say now (MasterNotFoundError, a ConnectionError, if none
        knows one)."""
        host, port = await manager.discover_master(self.master)
        return host, int(port)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel-managed pool whose calls wait for a free connection (as the standalone pool does)."""


def connect_fast(url: str | None, cluster: bool = False, sentinels: Sentinels | None = None, connections: int = 1):
    """The auto-pipelining connection for the request path, where the deployment allows one; with
    ``sentinels`` it connects to the primary they name, each time it (re)connects. ``connections`` > 1:
    that many, calls taken in turn (spread.py: for writes that wait for replicas)."""
    if url is None or cluster:
        return None
    from .pipelining import PipelinedConnection
    from .spread import Spread

    locate = None
    if sentinels is not None:
        manager = sentinels.manager(url)
        locate = lambda: sentinels.primary(manager)  # noqa: E731
    made = [PipelinedConnection(url, locate=locate) for _ in range(connections)]
    return made[0] if connections == 1 else Spread(made)


def connect(url: str | None, cluster: bool = False, max_connections: int = 32, sentinels: Sentinels | None = None):
    """An asyncio Redis client for the URL (or the embedded store when ``url`` is None) with at most
    ``max_connections`` connections, however many task hubs and calls there are: a call waits
    (up to POOL_TIMEOUT) for a free connection rather than failing. With ``sentinels``, the
    connections go to the primary they name, found again after a failover."""
    if sentinels is not None:
        manager = sentinels.manager(url)
        return manager.master_for(sentinels.master, connection_pool_class=_BlockingSentinelPool,
                                  max_connections=max_connections, timeout=POOL_TIMEOUT, retry=None,
                                  check_connection=True, **_CLIENT_OPTIONS)
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
    """``replica_acks``: writes queued with :meth:`execute_replicated` are answered once that many replicas
    have them: one WAIT after the writes of a round trip, on the connection that wrote them (on a Cluster,
    one per master the round trip wrote to, routed by the written key's slot)."""

    def __init__(self, redis, max_batch: int = 512, replica_acks: int = 0, replica_ack_timeout_ms: int = 1000) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._replica_acks = replica_acks
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self._pending: list[tuple[tuple, asyncio.Future, bool]] = []
        self._tasks: set[asyncio.Task] = set()

    def execute(self, *args, replicated: bool = False) -> asyncio.Future:
        """Queue one command; the future resolves to its reply (or its error)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, future, replicated and self._replica_acks > 0))
        if len(self._pending) >= self._max_batch:
            self._flush()
        return future

    def execute_replicated(self, *args) -> asyncio.Future:
        """Queue one write, answered once ``replica_acks`` replicas have it (NotReplicated if fewer did)."""
        return self.execute(*args, replicated=True)

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wait_targets(self, batch) -> dict[int, object]:
        """Which WAIT covers each replicated command of the batch: index in the batch -> a node (Cluster:
        the master of its first key's slot) or None (one connection)."""
        cluster = self._redis.client if isinstance(self._redis, Gated) else None
        targets = {}
        for i, (args, _, replicated) in enumerate(batch):
            if replicated:
                key = args[3] if cluster is not None and len(args) > 3 and int(args[2]) > 0 else None
                targets[i] = cluster.get_node_from_key(key) if key is not None else None
        return targets

    async def _send(self, batch: list[tuple[tuple, asyncio.Future, bool]]) -> None:
        targets = self._wait_targets(batch) if self._replica_acks else {}
        nodes = list(dict.fromkeys(targets.values()))
        wait = ("WAIT", self._replica_acks, self._replica_ack_timeout_ms)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for args, _, _ in batch:
                    pipe.execute_command(*args)
                for node in nodes:
                    pipe.execute_command(*wait, **({"target_nodes": node} if node is not None else {}))
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the round trip failed: every command in it failed
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        acks = dict(zip(nodes, replies[len(batch):]))
        for i, ((_, future, _), reply) in enumerate(zip(batch, replies)):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            elif i in targets and _short(acks[targets[i]], self._replica_acks):
                future.set_exception(NotReplicated(not_replicated_message(acks[targets[i]], self._replica_acks,
                                                                          self._replica_ack_timeout_ms)))
            else:
                future.set_result(reply)


def _short(ack, wanted: int) -> bool:
    return isinstance(ack, Exception) or int(ack) < wanted
