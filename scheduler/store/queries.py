"""Store operations that find, list and purge instances (mixed into the Store).

Every query walks per-partition indexes merged into one order, ``(created_ms,
instance id)``: the ``by-status`` zsets, whose members ``<status>|<created ms, 16
digits>|<id>`` sort that way within a status, in the ranges of the statuses of the
filter; without one, of every status that the partition's stats count (in a hub of
schema 2, the range of ``*``, which lists every instance there). A :class:`Cursor` is a position in that
order; a page continues strictly after it, so instances created while a client pages
are never returned twice and never shift what follows (their ``created_ms`` is now).

A page does bounded work whatever the data: its range reads, the index entries they
return and its reads of instance hashes add up to at most :data:`MAX_EXAMINED` (beyond
that, only the start event of each match is read). When that budget is spent before the
page is full, the page ends early, even empty, with a cursor that continues after
everything examined: the SDKs' clients loop on the token.

Hubs made before the status index (schema 1) may hold instances that are not in it: their
queries walk the ``by-created`` zsets instead (ordered by score, then member bytes), as
bounded but for the entries at exactly the cursor's millisecond, which are read whole.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from ..protocol import STATUSES, TERMINAL
from . import keys
from .common import count_in_batches, score, unavailable_on_redis_errors
from .records import Cursor, Found, InstanceFilter
from .scripts import Code

_PURGE_BATCH = 100
MAX_EXAMINED = 1000  # range reads + index entries read + instance hashes read, per query page
_EVERY_STATUS = tuple(sorted(STATUSES))


class _Budget:
    """What a scan may still read, and where it stopped when it ran out (None: it did not)."""

    def __init__(self, left: int | None) -> None:
        self.left = left  # None: no bound (purges, bounded by their timeout)
        self.stopped_at: Cursor | None = None


def _member_cursor(status: str, member: bytes) -> Cursor:
    """The cursor of a status index member ``<status>|<16 digits>|<id>``."""
    text = member.decode()
    at = len(status) + 1
    return Cursor(int(text[at:at + 16]), text[at + 17:])


def _lex(status: str, created_ms: int, instance_id: str = "") -> str:
    return f"{status}|{created_ms:016d}|{instance_id}"


class QueryOps:
    """Uses the Store's ``_write``, ``_outcome`` and ``redis``."""

    SCRIPTS: tuple[str, ...] = ("purge_instance",)

    # -- queries -------------------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def query_instances(self, hub: keys.HubKeys, flt: InstanceFilter, page_size: int,
                              after: Cursor | None = None, start_events: bool = True,
                              examine: int | None = None) -> tuple[list[Found], Cursor | None]:
        """Up to ``page_size`` matching instances after ``after`` in (created_ms, id) order, and the
        cursor to continue from: None when nothing further matches (the scan looks one match ahead).
        The page's range reads, index entries read and instance hashes read add up to at most ``examine`` (default :data:`MAX_EXAMINED`):
        when that runs out first, the page is short (maybe empty) and the cursor continues after what
        was examined."""
        found: list[Found] = []
        budget = _Budget(MAX_EXAMINED if examine is None else examine)
        async for item in self._matching(hub, flt, after, page_size + 1, start_events, budget):
            found.append(item)
            if len(found) > page_size:
                break
        if len(found) > page_size:
            return found[:page_size], found[page_size - 1].cursor
        return found, budget.stopped_at

    async def _matching(self, hub: keys.HubKeys, flt: InstanceFilter, after: Cursor | None, batch: int,
                        start_events: bool, budget: _Budget | None = None) -> AsyncIterator[Found]:
        """Matching instances in order, reading at most ``batch`` index entries per index per round."""
        budget = budget or _Budget(None)
        async for chunk in self._candidates(hub, flt, after, batch, budget):
            pks = [hub.for_instance(c.instance_id) for c in chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for c, pk in zip(chunk, pks):
                    pipe.hgetall(pk.instance(c.instance_id))
                hashes = await pipe.execute()
            if budget.left is not None:
                budget.left -= len(chunk)
            hits = [(c, pk, {k.decode(): v for k, v in h.items()})
                    for c, pk, h in zip(chunk, pks, hashes) if h]  # an empty hash: purged meanwhile
            hits = [(c, pk, h) for c, pk, h in hits if flt.matches(h)]  # the index may be behind: check
            if start_events and hits:
                await self._add_start_events(hits)
            for c, _, h in hits:
                yield Found(c, h)

    async def _add_start_events(self, hits: list[tuple[Cursor, keys.PartitionKeys, dict[str, bytes]]]) -> None:
        """Read the ExecutionStarted event (input, tags) of each hit, where its ``start`` field says."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for c, pk, h in hits:
                where, _, index = h.get("start", b"").decode().partition(" ")
                key = pk.inbox(c.instance_id) if where == "inbox" else pk.history(c.instance_id)
                pipe.lindex(key, int(index) if index.isdigit() else 0)
            events = await pipe.execute()
        for (_, _, h), event in zip(hits, events):
            if event is not None and "start" in h:
                h["start_event"] = event

    @staticmethod
    def _statuses_indexed(hub: keys.HubKeys, flt: InstanceFilter) -> tuple[str, ...] | None:
        """The statuses whose ranges of the status index answer the filter (without one: every status,
        or "*", every instance, in a hub of schema 2); () to walk the by-created zsets instead (a hub made
        before the status index); None when no status can match."""
        statuses = set(flt.statuses)
        if flt.terminal_only:
            statuses = (statuses & TERMINAL) if statuses else set(TERMINAL)
            if not statuses:
                return None
        if hub.keeps_by_created:
            return ()
        if not statuses:
            return ("*",) if hub.indexes_all else _EVERY_STATUS
        return tuple(sorted(statuses))

    async def _candidates(self, hub: keys.HubKeys, flt: InstanceFilter, after: Cursor | None,
                          batch: int, budget: _Budget) -> AsyncIterator[list[Cursor]]:
        """Index entries after ``after`` within the creation bounds whose id has the prefix, in order.

        The indexes are the ranges of the partitions' status indexes of each status of the filter
        (see :meth:`_statuses_indexed`) or, in a hub made before the status index, their by-created zsets. Each round reads at most ``batch`` entries per index past the cursor
        (plus, in a by-created zset, the entries at exactly the cursor's millisecond, which the cursor's
        id splits: bounded by how many instances one partition creates in one millisecond) and yields
        the ones that no unread entry can precede: those up to the smallest last entry of the indexes
        that filled their batch. With a bounded ``budget`` (which the caller also charges for the
        instances it reads of what is yielded), a round reads no more than what is left of it could
        pay for, its entries and their instances (the first round at least one entry per index); once
        it is spent, the scan stops and says where (``budget.stopped_at``)."""
        if flt.created_from_ms is not None and (after is None or after.created_ms < flt.created_from_ms):
            after = None
        statuses = self._statuses_indexed(hub, flt)
        if statuses is None:
            return
        live = await self._indexes(hub, statuses, budget)
        first = True
        while live:
            if after is not None and flt.created_to_ms is not None and after.created_ms >= flt.created_to_ms:
                return
            step = batch
            if budget.left is not None:
                commands = sum(2 if s is None and after is not None else 1 for _, s in live)
                step = min(batch, (budget.left - commands) // (2 * len(live)))
                if step < 1:
                    if not first:
                        budget.stopped_at = after
                        return
                    step = 1
            first = False
            async with self.redis.pipeline(transaction=False) as pipe:
                for pk, status in live:
                    self._read_index(pipe, pk, status, flt, after, step)
                replies = iter(await pipe.execute())
            per_index: list[list[Cursor]] = []
            full: list[bool] = []
            bound: Cursor | None = None
            spent = 0
            for _, status in live:
                if status is None:
                    entries = []
                    if after is not None:
                        same = next(replies)
                        spent += 1 + len(same)
                        entries = [c for c in (Cursor(score(s), m.decode()) for m, s in same) if c > after]
                    rest = next(replies)
                    entries += [Cursor(score(s), m.decode()) for m, s in rest]
                else:
                    rest = next(replies)
                    entries = [_member_cursor(status, m) for m in rest]
                spent += 1 + len(rest)
                per_index.append(entries)
                full.append(len(rest) >= step)
                if full[-1] and (bound is None or entries[-1] < bound):
                    bound = entries[-1]
            if budget.left is not None:
                budget.left -= spent
            ready = sorted({c for entries in per_index for c in entries if bound is None or c <= bound})
            chunk = [c for c in ready if c.instance_id.startswith(flt.id_prefix)]
            for i in range(0, len(chunk), batch):
                yield chunk[i:i + batch]
            if bound is None:
                return
            live = [source for source, entries, was_full in zip(live, per_index, full)
                    if was_full or (entries and entries[-1] > bound)]
            after = bound

    async def _indexes(self, hub: keys.HubKeys, statuses: tuple[str, ...],
                       budget: _Budget) -> list[tuple[keys.PartitionKeys, str | None]]:
        """The indexes to read: (partition, status), or (partition, None) for its by-created zset. For
        every status (an unfiltered query of a schema-3 hub) only the statuses that the partition's
        stats count, which every status change moves in the same step as the index (one read per
        partition instead of a range per status)."""
        if statuses != _EVERY_STATUS:
            return [(pk, s) for pk in hub.all_partitions() for s in (statuses or (None,))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for pk in hub.all_partitions():
                pipe.hgetall(pk.stats)
            counts = await pipe.execute()
        if budget.left is not None:
            budget.left -= len(counts)
        return [(pk, s) for pk, n in zip(hub.all_partitions(), counts) for s in statuses
                if int(n.get(s.encode(), 0)) > 0]

    @staticmethod
    def _read_index(pipe, pk: keys.PartitionKeys, status: str | None, flt: InstanceFilter,
                    after: Cursor | None, count: int) -> None:
        """Queue the reads of up to ``count`` entries of one index after ``after`` within the creation
        bounds: a by-created zset (``status`` None) or the range of ``status`` in the status index."""
        if status is None:
            hi = "+inf" if flt.created_to_ms is None else f"({flt.created_to_ms}"
            if after is not None:  # the entries at the cursor's ms, which its id splits
                pipe.zrangebyscore(pk.by_created, after.created_ms, after.created_ms, withscores=True)
                lo = f"({after.created_ms}"
            else:
                lo = "-inf" if flt.created_from_ms is None else flt.created_from_ms
            pipe.zrangebyscore(pk.by_created, lo, hi, start=0, num=count, withscores=True)
            return
        if after is not None:
            lo = "(" + _lex(status, after.created_ms, after.instance_id)
        elif flt.created_from_ms is not None:
            lo = "[" + _lex(status, flt.created_from_ms)
        else:
            lo = f"[{status}|"
        hi = f"({status}}}" if flt.created_to_ms is None else "(" + _lex(status, flt.created_to_ms)
        pipe.zrangebylex(pk.by_status, lo, hi, start=0, num=count)

    # -- purge ---------------------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def purge_instance(self, hub: keys.HubKeys, instance_id: str, ended_before_ms: int | None = None) -> bool:
        """Delete a terminal instance (see purge_instance.lua); False if absent or not terminal, or, with
        ``ended_before_ms``, if it did not end before then."""
        pk = hub.for_instance(instance_id)
        reply = await self._write("purge_instance", hub, pk, [
            pk.instance(instance_id), pk.inbox(instance_id), pk.history(instance_id),
            pk.by_created, pk.due, pk.ready, pk.stats, pk.timers(instance_id), pk.seen(instance_id),
            pk.by_completed, pk.by_status], [instance_id, "" if ended_before_ms is None else ended_before_ms])
        return self._outcome(reply, instance_id, Code.NOT_FOUND, Code.WRONG_STATUS, Code.NOT_READY)[0] is Code.OK

    @unavailable_on_redis_errors
    async def terminal_history(self, hub: keys.HubKeys, instance_id: str) -> list[bytes] | None:
        """The whole history of a terminal instance (what a recursive purge reads its children from);
        None if the instance is absent or not terminal."""
        pk = hub.for_instance(instance_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(pk.instance(instance_id), "status")
            pipe.lrange(pk.history(instance_id), 0, -1)
            status, events = await pipe.execute()
        return events if status is not None and status.decode() in TERMINAL else None

    @unavailable_on_redis_errors
    async def purge_instances(self, hub: keys.HubKeys, instance_ids: Iterable[str],
                              ended_before_ms: int | None = None) -> int:
        """Purge each terminal instance of the ids (one script each, sent together; with ``ended_before_ms``,
        each that ended before then); returns how many went."""
        return await count_in_batches(instance_ids, lambda iid: self.purge_instance(hub, iid, ended_before_ms),
                                      _PURGE_BATCH)

    @unavailable_on_redis_errors
    async def purge_matching(self, hub: keys.HubKeys, flt: InstanceFilter, timeout: float | None = None,
                             purge: Callable[[keys.HubKeys, list[str]], Awaitable[int]] | None = None
                             ) -> tuple[int, bool]:
        """Purge the terminal instances that match, walking the creation index in bounded batches.

        Returns (how many went, complete); with a ``timeout`` (seconds) it stops at the first batch
        boundary after it and reports complete=False if matches may remain. ``purge`` deletes a batch
        of ids and counts what went (default :meth:`purge_instances`)."""
        purge = purge or self.purge_instances
        deadline = None if timeout is None else time.monotonic() + timeout
        flt = dataclasses.replace(flt, terminal_only=True)
        deleted = 0
        batch: list[str] = []
        async for item in self._matching(hub, flt, None, _PURGE_BATCH, start_events=False):
            batch.append(item.cursor.instance_id)
            if len(batch) >= _PURGE_BATCH:
                deleted += await purge(hub, batch)
                batch = []
                if deadline is not None and time.monotonic() >= deadline:
                    return deleted, False
        deleted += await purge(hub, batch)
        return deleted, True

    # -- retention -----------------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def ended_before(self, hub: keys.HubKeys, partition: int, before_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` ids of instances of one partition that ended before ``before_ms`` (Redis
        time), those that ended first first."""
        ids = await self.redis.zrangebyscore(hub.partition(partition).by_completed, "-inf", f"({before_ms}",
                                             start=0, num=limit)
        return [i.decode() for i in ids]

    @unavailable_on_redis_errors
    async def retention_seconds(self, hub: keys.HubKeys) -> float | None:
        """The hub's own retention (seconds; 0: keep finished instances), or None if it has none."""
        value = await self.redis.hget(hub.meta, "retention_seconds")
        return None if value is None else float(value)

    @unavailable_on_redis_errors
    async def set_retention_seconds(self, hub: keys.HubKeys, seconds: float | None) -> None:
        """Set (or with None, clear) the hub's own retention."""
        if seconds is None:
            await self.redis.hdel(hub.meta, "retention_seconds")
        else:
            await self.redis.hset(hub.meta, "retention_seconds", repr(float(seconds)))

    @unavailable_on_redis_errors
    async def take_turn(self, hub: keys.HubKeys, job: str, owner: str, ttl_ms: int) -> bool:
        """True if this caller may run ``job`` for the hub now: one replica at a time, for ``ttl_ms``."""
        return bool(await self.redis.set(hub.turn(job), owner, nx=True, px=ttl_ms))

    # -- history -------------------------------------------------------------------------------

    @unavailable_on_redis_errors
    async def history_page(self, hub: keys.HubKeys, instance_id: str, start: int,
                           count: int) -> list[bytes] | None:
        """``count`` history events (serialized HistoryEvent) from index ``start``; None if there is no
        such instance. Before the first dispatch the history is empty: the events wait in the inbox."""
        pk = hub.for_instance(instance_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(pk.instance(instance_id))
            pipe.lrange(pk.history(instance_id), start, start + count - 1)
            exists, events = await pipe.execute()
        return events if exists else None
