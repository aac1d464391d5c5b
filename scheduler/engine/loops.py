"""The one loop shape for background work: step, then sleep until the step's answer or a wake-up.

A step returns how long to sleep before the next step (0: at once). Errors are
logged and backed off exponentially; the back-off resets on the next success.
Cancellation (or ``stop()``) ends the loop.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .. import errors

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel a task and wait until it has ended.

    Cancels again until it takes: on Python < 3.12 ``asyncio.wait_for`` (which
    redis-py uses around socket I/O) can swallow a cancellation that arrives as
    the wrapped call completes, and the task would then run on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with %r", task.get_name(), task.exception())


class Loop:
    def __init__(self, name: str, step: Callable[[], Awaitable[float]], max_sleep: float) -> None:
        self.name = name
        self._step = step
        self._max_sleep = max_sleep
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run the next step now instead of at the end of the current sleep."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        backoff = MIN_BACKOFF
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self._step()
                backoff = MIN_BACKOFF
            except asyncio.CancelledError:
                raise
            except errors.HubGone:  # the loop's task hub was deleted: the hubs' refresh stops the loop
                delay = self._max_sleep
            except Exception as exc:  # noqa: BLE001 - a background loop must survive anything
                log.warning("%s: %s; retrying in %.2fs", self.name, exc, backoff)
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            if delay <= 0:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), min(delay, self._max_sleep))
            except asyncio.TimeoutError:
                pass
