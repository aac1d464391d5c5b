"""Helpers shared by the store's modules: Redis error translation, batched calls, score parsing."""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import redis.exceptions as rexc

from .. import errors


def unavailable_on_redis_errors(fn):
    """Turn "Redis did not answer" into StoreUnavailable; everything else passes through."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.ClusterDownError,
                rexc.TryAgainError, OSError) as exc:
            raise errors.StoreUnavailable(f"Redis is unavailable: {exc}") from exc

    return wrapper


T = TypeVar("T")


async def count_in_batches(items: Iterable[T], each: Callable[[T], Awaitable[int]], size: int) -> int:
    """Run ``each`` on every distinct item, ``size`` at a time (their Redis calls share round trips);
    returns the sum of what it returned."""
    distinct = list(dict.fromkeys(items))
    total = 0
    for i in range(0, len(distinct), size):
        total += sum(await asyncio.gather(*(each(item) for item in distinct[i:i + size])))
    return total


def score(value) -> int:
    return int(float(value))
