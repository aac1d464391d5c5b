"""Helpers shared by the store's modules: script loading, Redis error translation, score parsing."""
from __future__ import annotations

import functools
from importlib import resources

import redis.exceptions as rexc

from . import errors


def load_lua(name: str) -> str:
    return (resources.files("scheduler") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


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


def score(value) -> int:
    return int(float(value))
