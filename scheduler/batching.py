"""Coalesce the Redis commands of concurrent requests into one pipeline round trip.

Each request's store call is one command (mostly EVALSHA of its script). Under
load many requests are in flight at once; sending each on its own costs a
connection checkout, a write and a read, each with Python overhead. The batcher
queues the commands issued during one event-loop turn and sends them as one
non-transactional pipeline at the end of the turn. Every command keeps its own
atomicity (a script is atomic by itself); only the network round trip is shared.
"""
from __future__ import annotations

import asyncio


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
