"""A lean, auto-pipelining connection to a standalone Redis for the hot request path.

Concurrent requests each need one command (mostly EVALSHA). redis-py spends
~100 µs of Python per command (connection checkout, retries, callbacks), which
is more than the rest of a request. This connection keeps one socket, appends
each command (packed by hiredis) to a buffer that is written once per event-loop
turn, and matches replies to callers in order with hiredis' parser. Every
command keeps its own atomicity; only the round trip is shared.

Errors use redis-py's exception classes, so callers handle both transports alike,
and say whether the command may have been applied: :class:`CommandNotSent` (it never
left this process: not applied) or :class:`ReplyLost` (it was written to Redis and
its reply did not come back: it may have been applied). A connection is used only
after Redis answered a PING on it, so commands are never written to a Redis that is
stopped or not yet serving. It reconnects on the next command after a failure, and a
watchdog closes a connection whose replies stall (Redis hung), failing its callers promptly.

:class:`Subscription` is the wake-up subscription on a connection of its own, read with the
same parser: redis-py's pub/sub spends ~50 µs of Python per message, and every replica reads
every wake-up that any replica publishes (two per orchestration).
"""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlparse

import hiredis
import redis.exceptions as rexc

from .wire import (CommandNotSent, NotReplicated, NotThePrimary, ReplyLost, _reply_error,  # noqa: F401 (re-exported)
                   not_replicated_message, ssl_context, url_options)

CONNECT_TIMEOUT = 2.0
REPLY_TIMEOUT = 5.0
HEALTH_SECONDS = 2.0  # a subscribed connection silent this long is asked for a PING


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.loop = loop  # the loop of the transport, where callers' futures are made
        self.reader = hiredis.Reader(replyError=_reply_error)
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.buffer: list[bytes] = []  # packed commands not written yet (written once per loop turn)
        # Writes that wait for replicas: (the command's reply, the caller's future), not yet covered by a WAIT.
        self.acked: list[tuple[asyncio.Future, asyncio.Future]] = []
        self.waiting_for_replicas = False  # a WAIT is out: the buffer is held until it answers
        self.transport: asyncio.Transport | None = None
        self.last_reply = time.monotonic()
        # set on a subscribed connection: takes every reply (none has a caller waiting), and None when
        # the connection is lost
        self.pushes: Callable[[object], None] | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self.last_reply = time.monotonic()
        waiting, gets = self.waiting, self.reader.gets
        reply = gets()
        if self.pushes is not None:
            while reply is not False:
                self.pushes(reply)
                reply = gets()
            return
        demoted = False
        while reply is not False:
            future = waiting.popleft()
            if not future.done():
                if isinstance(reply, Exception):
                    demoted = demoted or isinstance(reply, rexc.ReadOnlyError)
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            reply = gets()
        if demoted and self.transport is not None:  # the next command finds the primary again
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.owner._lost(self)
        if self.pushes is not None:
            self.pushes(None)
        reason = exc or "closed"
        sent = len(self.waiting) - len(self.buffer)  # the rest is still in the buffer: never written
        lost = ReplyLost(f"the connection to Redis was lost ({reason}) before its reply came back")
        unsent = CommandNotSent(f"the connection to Redis was lost ({reason}) before the command was sent")
        for n in range(len(self.waiting)):
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(lost if n < sent else unsent)
        self.buffer = []
        acked, self.acked = self.acked, []
        for reply, caller in acked:  # never covered by a WAIT: the caller learns what its command learnt
            if not caller.done():
                caller.set_exception(reply.exception() if reply.done() and not reply.cancelled() and
                                     reply.exception() else lost)


class PipelinedConnection:
    """``await conn.execute(*args)`` returns the raw reply (bytes, int, list) or raises."""

    def __init__(self, url: str, locate: Callable[[], Awaitable[tuple[str, int]]] | None = None,
                 replica_acks: int = 0, replica_ack_timeout_ms: int = 1000) -> None:
        """``locate``: where the primary is now (the Sentinels), asked on each (re)connection instead of
        the URL's host and port. ``replica_acks``: writes sent with :meth:`execute_replicated` are
        answered once that many replicas have them (one WAIT per round trip)."""
        self.locate = locate
        self.replica_acks = replica_acks
        self.replica_ack_timeout_ms = replica_ack_timeout_ms
        # (key, field, value) a new connection must find before it is used (the dataset's identity), or None
        self.identity: tuple[str, str, bytes] | None = None
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        params = url_options(parsed.query)
        self.ssl = ssl_context(params) if parsed.scheme == "rediss" else None
        # As redis-py reads a URL (so every connection path logs in alike): the user name and password
        # of the URL's user info, else its username= and password= options; the database of db=, else the path.
        self.username = unquote(parsed.username) if parsed.username else params.get("username") or None
        self.password = unquote(parsed.password) if parsed.password else params.get("password") or None
        path = parsed.path.strip("/")
        self.db = int(params["db"]) if params.get("db") else int(path) if path else 0
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def execute(self, *args) -> asyncio.Future:
        protocol = self._protocol
        if protocol is None:
            return asyncio.ensure_future(self._connect_then(args))
        loop = protocol.loop  # (asyncio.get_running_loop() costs a getpid() system call on each use)
        future = loop.create_future()
        if not protocol.buffer:
            loop.call_soon(self._flush, protocol)
        if not protocol.waiting:
            protocol.last_reply = time.monotonic()  # the reply clock starts with the first outstanding command
        protocol.buffer.append(hiredis.pack_command(args))
        protocol.waiting.append(future)
        return future

    async def _connect_then(self, args, replicated: bool = False):
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._connecting)
        return await (self.execute_replicated(*args) if replicated else self.execute(*args))

    def execute_replicated(self, *args) -> asyncio.Future:
        """Like :meth:`execute`, for a write: its reply comes once ``replica_acks`` replicas have it. One
        WAIT follows the writes of a round trip on the same connection (it covers every earlier write of
        the connection); while it is out, later commands wait in the buffer (group commit). Fewer
        replicas in time: :class:`NotReplicated` (the write was applied on the primary)."""
        if not self.replica_acks:
            return self.execute(*args)
        protocol = self._protocol
        if protocol is None:
            return asyncio.ensure_future(self._connect_then(args, replicated=True))
        reply = self.execute(*args)
        caller = protocol.loop.create_future()
        protocol.acked.append((reply, caller))
        return caller

    async def _connect(self) -> None:
        protocol = await self._open()
        self._protocol = protocol
        self._watchdog = asyncio.get_running_loop().call_later(1.0, self._watch, protocol)

    async def _open(self) -> _Protocol:
        """A new connection that Redis answered a PING on (after AUTH and SELECT when the URL has them);
        with ``locate``, to the primary the Sentinels name, which must say it is the primary (ROLE); with
        ``identity``, to a Redis that holds the dataset's identity."""
        loop = asyncio.get_running_loop()
        if self.locate is not None:
            try:
                self.host, self.port = await self.locate()
            except (rexc.RedisError, OSError) as exc:
                raise CommandNotSent(f"the Sentinels name no primary: {exc}") from exc
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self, loop), self.host, self.port, ssl=self.ssl),
                CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise CommandNotSent(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from exc
        # Requests are written only once Redis answered these (a stopped Redis accepts connections);
        # AUTH goes first: a Redis that requires a password answers anything else with NOAUTH.
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if self.locate is not None:
            setup.append(("ROLE",))
        if self.identity is not None:
            setup.append(("HGET", self.identity[0], self.identity[1]))
        setup.append(("PING",))
        futures = []
        for command in setup:
            future = loop.create_future()
            protocol.waiting.append(future)
            protocol.transport.write(hiredis.pack_command(command))
            futures.append(future)
        try:
            await asyncio.wait_for(asyncio.gather(*futures), CONNECT_TIMEOUT)
        except asyncio.TimeoutError as exc:
            protocol.transport.abort()
            raise CommandNotSent(f"Redis at {self.host}:{self.port} did not answer within {CONNECT_TIMEOUT:g} s "
                                 "of connecting") from exc
        except rexc.ResponseError as exc:  # AUTH or SELECT refused: say so (Redis' reply holds no password)
            protocol.transport.abort()
            raise CommandNotSent(f"Redis at {self.host}:{self.port} refused the connection's setup: {exc}") from exc
        except Exception as exc:
            protocol.transport.abort()
            raise CommandNotSent(f"the connection to Redis at {self.host}:{self.port} failed: {exc}") from exc
        except BaseException:
            protocol.transport.abort()
            raise
        replies = [future.result() for future in futures]
        at = 0 if self.password is None else 1
        at += 1 if self.db else 0
        if self.locate is not None:
            role = replies[at][0] if replies[at] else b"?"
            at += 1
            if role != b"master":
                protocol.transport.abort()
                raise NotThePrimary(f"Redis at {self.host}:{self.port} is a {role.decode(errors='replace')}, not "
                                    f"the primary (the Sentinels have not switched yet)")
        if self.identity is not None and replies[at] != self.identity[2]:
            protocol.transport.abort()
            raise CommandNotSent(f"Redis at {self.host}:{self.port} does not hold this dataset's identity "
                                 f"(emptied or replaced): nothing is written until an operator adopts it")
        return protocol

    async def subscribe(self, channel: str) -> Subscription:
        """A subscription to ``channel`` on a connection of its own (a subscribed connection takes no
        other command), listening once this returns."""
        subscription = Subscription(await self._open(), f"{self.host}:{self.port}")
        await subscription.listen(channel)
        return subscription

    def _flush(self, protocol: _Protocol) -> None:
        if protocol.transport is None or protocol.transport.is_closing():
            return  # connection_lost fails what is buffered as not sent
        if protocol.waiting_for_replicas:
            return  # written once the WAIT out answers (see execute_replicated)
        if protocol.acked:
            wait = protocol.loop.create_future()
            protocol.buffer.append(hiredis.pack_command(("WAIT", self.replica_acks, self.replica_ack_timeout_ms)))
            protocol.waiting.append(wait)
            batch, protocol.acked = protocol.acked, []
            protocol.waiting_for_replicas = True
            wait.add_done_callback(lambda done: self._replicated(protocol, done, batch))
        data, protocol.buffer = b"".join(protocol.buffer), []
        protocol.transport.write(data)

    def _replicated(self, protocol: _Protocol, wait: asyncio.Future,
                    batch: list[tuple[asyncio.Future, asyncio.Future]]) -> None:
        """A WAIT answered (or its connection was lost): answer the writes it covers, write what waited."""
        protocol.waiting_for_replicas = False
        failure = None if wait.cancelled() else wait.exception()
        count = None if failure is not None or wait.cancelled() else wait.result()
        for reply, caller in batch:
            if caller.done():
                continue
            if reply.cancelled() or reply.exception() is not None:  # the command itself failed: its error
                caller.set_exception(reply.exception() if not reply.cancelled() else CommandNotSent("cancelled"))
            elif failure is not None or count < self.replica_acks:
                caller.set_exception(NotReplicated(not_replicated_message(
                    failure if failure is not None else count, self.replica_acks, self.replica_ack_timeout_ms)))
            else:
                caller.set_result(reply.result())
        if protocol.buffer:
            self._flush(protocol)

    def _watch(self, protocol: _Protocol) -> None:
        """Close a connection whose replies stall, so callers fail fast and the next command reconnects."""
        if protocol is not self._protocol:
            return
        patience = REPLY_TIMEOUT + (self.replica_ack_timeout_ms / 1000 if self.replica_acks else 0)
        if protocol.waiting and time.monotonic() - protocol.last_reply > patience:
            protocol.transport.abort()
            return
        self._watchdog = asyncio.get_running_loop().call_later(1.0, self._watch, protocol)

    def _lost(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class Subscription:
    """The messages published on one channel, in order: ``async for data in subscription``. The
    iteration ends with a ConnectionError when the connection is lost, or when Redis leaves a PING
    sent after HEALTH_SECONDS of silence unanswered for REPLY_TIMEOUT (a stopped or unreachable
    Redis). ``close()`` when done."""

    def __init__(self, protocol: _Protocol, where: str) -> None:
        self._protocol = protocol
        self._where = where
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future | None = None  # set to True when a reply arrives
        self._subscribed = False
        self._lost: str | None = None
        protocol.pushes = self._push

    def _push(self, reply) -> None:
        if reply is None:
            self._lost = "the connection was lost"
        elif isinstance(reply, Exception):
            self._lost = f"Redis answered {reply}"
            self._protocol.transport.abort()
        elif isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self._messages.append(reply[2])
        elif isinstance(reply, list) and reply and reply[0] == b"subscribe":
            self._subscribed = True
        waiter = self._waiter  # any reply (a pong too) shows the connection is alive
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _arrival(self, timeout: float) -> bool:
        """Whether a reply arrives within ``timeout`` seconds (asyncio.wait_for would make a task of
        each wait: one per wake-up)."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        deadline = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(False))
        try:
            return await waiter
        finally:
            deadline.cancel()
            self._waiter = None

    async def listen(self, channel: str) -> None:
        self._protocol.transport.write(hiredis.pack_command(("SUBSCRIBE", channel)))
        try:
            while not self._subscribed:
                self._check()
                if not await self._arrival(CONNECT_TIMEOUT):
                    raise rexc.TimeoutError(f"Redis at {self._where} did not confirm the subscription")
        except BaseException:
            self.close()
            raise

    def _check(self) -> None:
        if self._lost is not None:
            raise rexc.ConnectionError(f"pub/sub subscription to {self._where}: {self._lost}")

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        pinged = False
        while not self._messages:
            self._check()
            if await self._arrival(REPLY_TIMEOUT if pinged else HEALTH_SECONDS):
                pinged = False
            elif pinged:
                self.close()
                raise rexc.TimeoutError(f"Redis at {self._where} did not answer a PING on the pub/sub "
                                        f"connection within {REPLY_TIMEOUT:g} s")
            else:
                pinged = True
                self._protocol.transport.write(hiredis.pack_command(("PING",)))
        return self._messages.popleft()

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.abort()
