"""Several pipelined connections used as one, for ``--redis-min-replica-acks``.

A ``WAIT`` blocks the connection it is sent on until replicas confirm, so one pipelined connection
runs one replica round trip at a time. Spread over a few connections (calls taken in turn), the
waits of concurrent writes overlap. Each connection keeps its own group commit: a ``WAIT`` covers the
writes sent on that connection before it.
"""
from __future__ import annotations

import asyncio
import itertools

from .pipelining import PipelinedConnection


class Spread:
    """The interface of :class:`PipelinedConnection` over ``connections``; settings apply to each."""

    def __init__(self, connections: list[PipelinedConnection]) -> None:
        self._connections = connections
        self._turn = itertools.cycle(connections)

    def execute(self, *args) -> asyncio.Future:
        return next(self._turn).execute(*args)

    def execute_replicated(self, *args) -> asyncio.Future:
        return next(self._turn).execute_replicated(*args)

    def subscribe(self, channel: str):
        return self._connections[0].subscribe(channel)

    def __setattr__(self, name: str, value) -> None:
        if name in ("replica_acks", "replica_ack_timeout_ms", "identity"):
            for connection in self._connections:
                setattr(connection, name, value)
        super().__setattr__(name, value)

    async def aclose(self) -> None:
        for connection in self._connections:
            await connection.aclose()
