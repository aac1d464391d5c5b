"""Helpers shared by the store's modules: Redis error translation, batched calls, score parsing."""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import prometheus_client
import redis.exceptions as rexc

from .. import errors
from .pipelining import CommandNotSent, NotReplicated, ReplyLost


def unavailable_on_redis_errors(fn):
    """Turn Redis failures into domain errors that say whether anything may have been written:
    StoreUnavailable (the command was not applied), StoreOutcomeUnknown (it reached Redis, or may
    have, and its reply is lost), RedisOutOfMemory (refused: nothing written)."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except rexc.ResponseError as exc:  # a script's OOM error keeps Redis' "OOM" prefix; a command's is a class
            if isinstance(exc, rexc.OutOfMemoryError) or str(exc).startswith("OOM"):
                raise errors.RedisOutOfMemory(
                    "Redis is out of memory (maxmemory reached) and refused the write; nothing was written") from exc
            if isinstance(exc, (rexc.ReadOnlyError, rexc.ClusterDownError, rexc.TryAgainError)) or \
                    str(exc).startswith("READONLY"):
                raise store_failure(exc) from exc  # a demoted primary, a Cluster in failover refused it: not applied
            raise
        except NotReplicated as exc:
            REDIS_ERRORS.labels("not_replicated").inc()
            raise errors.NotReplicated(str(exc)) from exc
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.ClusterDownError,
                rexc.TryAgainError, rexc.MaxConnectionsError, OSError) as exc:
            raise store_failure(exc) from exc

    return wrapper


# What redis-py (and fakeredis, the embedded store) say when a command could not be sent at all.
_NOT_SENT = ("connecting", "No connection available", "Too many connections", "emulating a connection error",
             "previous master is now a slave", "No master found")


REDIS_ERRORS = prometheus_client.Counter("dt_redis_errors_total", "Failed Redis calls, by what they mean",
                                        ["outcome"])


def store_failure(exc: Exception) -> errors.StoreError:
    """The domain error of a failed Redis call (counted in dt_redis_errors_total)."""
    text = str(exc)
    not_applied = (
        isinstance(exc, (CommandNotSent, rexc.BusyLoadingError, rexc.ClusterDownError, rexc.TryAgainError,
                         rexc.MaxConnectionsError, rexc.ReadOnlyError))  # never sent, or refused by Redis
        or (isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)) and not isinstance(exc, ReplyLost)
            and any(sign in text for sign in _NOT_SENT)))
    if not_applied:
        REDIS_ERRORS.labels("not_applied").inc()
        return errors.StoreUnavailable(f"Redis is unavailable: {exc}")
    REDIS_ERRORS.labels("unknown").inc()
    return errors.StoreOutcomeUnknown(f"Redis did not answer: {exc}")


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
