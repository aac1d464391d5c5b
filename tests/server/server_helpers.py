"""Helpers shared by the server tests (imported by module name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest
from pytest_redis.executor import RedisExecutor

from scheduler.store import keys
from scheduler.testing import free_port, redis_executor

PARTITIONS = 4
MAX_PAYLOAD = 1024


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.005) -> float:
    """Poll ``check`` until it is true and return the time it took; fail at the deadline."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, "condition not met before the deadline"
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def next_work(call, timeout: float = 5.0):
    """The next work item of a GetWorkItems stream that is not a health ping (within ``timeout``)."""
    async def read():
        while True:
            item = await call.read()
            assert item is not grpc.aio.EOF, "the work stream ended"
            if not item.HasField("healthPing"):
                return item
    return await asyncio.wait_for(read(), timeout)


def gone(pid: int) -> bool:
    """The process has ended: no such process, or a zombie its parent has not reaped yet (its sockets
    are closed)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2:].startswith(b"Z")


async def rpc_error(call: Awaitable, code: grpc.StatusCode) -> str:
    """Await a call that must fail with ``code``; returns its details (the message)."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value.details()
    return e.value.details() or ""


async def snapshot(redis, prefix: str) -> dict[str, object]:
    """Every key with the prefix and its serialized value."""
    return {k: await redis.dump(k) for k in await prefix_keys(redis, prefix)}


async def prefix_keys(redis, prefix: str) -> set[str]:
    """Every key with the prefix (SCAN, as an operator would)."""
    return {k.decode() async for k in redis.scan_iter(match=prefix + ":*", count=1000)}


def bookkeeping_keys(prefix: str, *hubs: str) -> set[str]:
    """Keys that exist without any instance: hub metadata, the hub registry and the dataset identity."""
    return {keys.hubs_key(prefix), keys.generations_key(prefix), keys.dataset_key(prefix)} | \
        {keys.meta_key(prefix, h) for h in hubs}


@contextlib.contextmanager
def own_redis_server() -> Iterator[RedisExecutor]:
    """A redis-server of the test's own on 127.0.0.1, which the test may stop and start again on the same port."""
    with tempfile.TemporaryDirectory(prefix="dt-test-redis-") as datadir:
        executor = redis_executor(free_port(), datadir)
        executor.start()
        try:
            yield executor
        finally:
            executor.stop()
