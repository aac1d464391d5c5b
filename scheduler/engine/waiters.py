"""Callers waiting on this replica for an instance's status to change (WaitForInstanceStart/Completion).

A waiter is woken by the status wake-up (published by the script that changed the status, on
any replica) or directly by a change made on this replica. Pub/sub is only a wake-up: the
instance hash is the truth, so a waiter re-reads it when woken and at least every
RECHECK_SECONDS, in case a wake-up was missed.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

RECHECK_SECONDS = 5.0


class Waiters:
    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)

    @contextlib.contextmanager
    def watch(self, hub: str, instance_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the instance's status may have changed (register before reading)."""
        event = asyncio.Event()
        key = (hub, instance_id)
        self._waiting[key].add(event)
        try:
            yield event
        finally:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[key]

    async def wait_for(self, hub: str, instance_id: str, read: Callable[[], Awaitable[T]],
                       done: Callable[[T], bool], time_left: Callable[[], float | None]) -> tuple[T, bool]:
        """Read the instance until ``done(read())``; returns (last read, whether done). Gives up when
        ``time_left()`` (seconds, None: no limit) is no longer positive."""
        with self.watch(hub, instance_id) as changed:
            while True:
                changed.clear()
                value = await read()
                if done(value):
                    return value, True
                remaining = time_left()
                if remaining is not None and remaining <= 0:
                    return value, False
                timeout = RECHECK_SECONDS if remaining is None else min(remaining, RECHECK_SECONDS)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)

    def status_changed(self, hub: str, instance_id: str) -> None:
        """Wake the waiters on the instance."""
        for event in self._waiting.get((hub, instance_id), ()):
            event.set()

    def wake_all(self) -> None:
        """Wake every waiter (after a gap in the subscription: anything may have changed)."""
        for events in self._waiting.values():
            for event in events:
                event.set()
