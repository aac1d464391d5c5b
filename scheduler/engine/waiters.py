"""Callers waiting on this replica for an instance's status to change (WaitForInstanceStart/Completion).

A waiter is woken by the status wake-up (published by the script that changed the status, on
any replica) or directly by a change made on this replica. Pub/sub is only a wake-up: the
instance hash is the truth, so a waiter re-reads it when woken and at least every
RECHECK_SECONDS, in case a wake-up was missed; a completion on this replica that ends the
instance hands its waiters the final state it wrote (read in the same script), which saves
them the read.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator

RECHECK_SECONDS = 5.0


class _Watch:
    """One caller's watch on an instance: set whenever its status may have changed; ``state`` is the
    instance's state when the change that set it came with one (a completion on this replica)."""

    __slots__ = ("event", "state")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.state: dict[str, bytes] | None = None


class Waiters:
    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], set[_Watch]] = defaultdict(set)

    @contextlib.contextmanager
    def watch(self, hub: str, instance_id: str) -> Iterator[_Watch]:
        """A watch set whenever the instance's status may have changed (register before reading)."""
        watch = _Watch()
        key = (hub, instance_id)
        self._waiting[key].add(watch)
        try:
            yield watch
        finally:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(watch)
                if not waiting:
                    del self._waiting[key]

    def watched(self, hub: str, instance_id: str) -> bool:
        """Whether a caller on this replica waits on the instance."""
        return (hub, instance_id) in self._waiting

    async def wait_for(self, hub: str, instance_id: str, read: Callable[[], Awaitable[dict[str, bytes] | None]],
                       done: Callable[[dict[str, bytes] | None], bool],
                       time_left: Callable[[], float | None]) -> tuple[dict[str, bytes] | None, bool]:
        """Read the instance until ``done(state)``, where a state is what ``read()`` returns or what a
        change on this replica handed over (:meth:`status_changed`); returns (last state, whether done).
        Gives up when ``time_left()`` (seconds, None: no limit) is no longer positive."""
        with self.watch(hub, instance_id) as watch:
            while True:
                watch.event.clear()
                if watch.state is not None:
                    value, watch.state = watch.state, None
                else:
                    value = await read()
                if done(value):
                    return value, True
                remaining = time_left()
                if remaining is not None and remaining <= 0:
                    return value, False
                timeout = RECHECK_SECONDS if remaining is None else min(remaining, RECHECK_SECONDS)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(watch.event.wait(), timeout)

    def status_changed(self, hub: str, instance_id: str, state: dict[str, bytes] | None = None) -> None:
        """Wake the waiters on the instance; ``state``: the instance's state right after the change,
        which they take instead of reading it."""
        for watch in self._waiting.get((hub, instance_id), ()):
            if state is not None:
                watch.state = state
            watch.event.set()

    def wake_all(self) -> None:
        """Wake every waiter (after a gap in the subscription: anything may have changed)."""
        for waiting in self._waiting.values():
            for watch in waiting:
                watch.event.set()
