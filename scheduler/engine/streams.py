"""A work stream: one connected worker, handed work items of the kinds it takes under leases.

A stream claims queued work of its hub (any partition; competing streams on any replica
claim each item once), writes it to its worker, renews the leases of what it handed out
while it lives, and hands them back when it closes. Leases of a replica that died expire
and any replica's sweep re-queues them. Either way the item's claim token stays good until
another claim takes the item: a worker that reports after its stream closed (the SDKs' stop()
cancels the stream first) has its result applied, once, if nobody took the item meanwhile.

Each kind of work item (:class:`WorkKind`: orchestrations, activities) has a lane on the
stream (:class:`Lane`): what it holds, its limit and filter, where to look next and what
was offered to it. A stream looks only where work may be: the partitions whose queue a
"work" wake-up named (sent when a queue stops being empty), those it took work from last
time (until a look finds nothing more) and, for orchestrations, the partition of one it
just finished (its completion may have made it ready again). It does no periodic work
while idle but the HealthPing at the configured interval: a lost wake-up is made good
by the dispatcher's rare safety look (dispatcher.py) and by the look everywhere that
follows a reconnected subscription. Work that a request on this replica just queued is
offered to one of its streams by id (see dispatcher.py), which tries to claim it at once.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..protocol import claim_token, instance_of
from ..store import Store
from ..store.keys import HubKeys, partition_of
from .loops import cancel_and_wait
from .work_kinds import NameFilter, WorkKind, accepts

log = logging.getLogger(__name__)

CANDIDATES_PER_PARTITION = 8
FILTERED_CANDIDATES_PER_PARTITION = 64  # a filtering stream looks further, past work it does not take

Write = Callable[[pb.WorkItem], Awaitable[None]]
# a work item claimed for a stream by the step that made it: (item, claim token, work item, fields kept
# for its completion or None)
Claimed = tuple[str, str, pb.WorkItem, dict[str, bytes] | None]


class Lane:
    """One kind of work on one stream."""

    def __init__(self, kind: WorkKind, limit: int, flt: NameFilter, partitions: int) -> None:
        self.kind = kind
        self.limit = limit  # most items held at once; 0: no limit
        self.filter = flt
        self.held: dict[str, str] = {}  # item -> claim token, for what this stream handed out
        self.since: dict[str, float] = {}  # item -> when it was handed out (monotonic seconds)
        self.let_go: set[str] = set()  # held past the longest hold: no longer renewed, but still counted
        self.look: set[int] = set(range(partitions))  # partitions to look at next
        self.offered: list[str] = []  # items to try first
        self.reserved = 0  # room promised to a step that claims work for this stream (see WorkStream.adopt)
        self.adopted: list[tuple[str, str, pb.WorkItem]] = []  # claimed for this stream by such a step, to write

    @property
    def room(self) -> int:
        return self.limit - len(self.held) - self.reserved if self.limit else (1 << 30) - self.reserved


@dataclass(frozen=True)
class StreamOptions:
    lease_seconds: float  # lease of a work item, renewed while the stream lives
    ping_seconds: float  # HealthPing interval while idle
    write_timeout_seconds: float  # a write its worker does not take off the wire this long ends the stream
    max_hold_seconds: float  # the longest a work item stays leased to this stream


class StreamStalled(Exception):
    """The worker took nothing off the wire for too long: the stream ends and its work goes back."""


class WorkStream:
    def __init__(self, store: Store, hub: HubKeys, lanes: list[Lane], options: StreamOptions,
                 claims: dict[str, dict[str, bytes]]) -> None:
        self.store = store
        self.hub = hub
        self.lanes = {lane.kind.code: lane for lane in lanes}
        self.options = options
        self.lease_ms = int(options.lease_seconds * 1000)
        self.ping_seconds = options.ping_seconds
        # claim token -> fields kept for the completion, while held: shared by the replica's streams, so
        # that a completion arriving here needs not read them again (they do not change during a claim)
        self.claims = claims
        self.wake = asyncio.Event()
        self.draining = False  # hand out nothing more
        self._closing = False
        self.closed = asyncio.Event()  # set once the stream has ended and handed its work back
        self._offset = itertools.count()

    @property
    def held(self) -> int:
        return sum(len(lane.held) for lane in self.lanes.values())

    @property
    def unwritten(self) -> int:
        """Work items claimed for this stream by other steps, not written yet."""
        return sum(len(lane.adopted) for lane in self.lanes.values())

    @property
    def takes_offers(self) -> bool:
        """True when the stream takes any work (no filter) and has room for more of every kind."""
        return all(lane.filter is None and lane.room > 0 for lane in self.lanes.values())

    def offer(self, kind: str, item: str) -> None:
        """An item of this kind was just queued: try it first."""
        self.lanes[kind].offered.append(item)
        self.wake.set()

    def reserve(self, kind: str, count: int) -> None:
        """Keep room for ``count`` items of this kind that a step will claim for this stream (adopt or
        unreserve follows)."""
        self.lanes[kind].reserved += count

    def unreserve(self, kind: str, count: int) -> None:
        self.lanes[kind].reserved -= count
        self.wake.set()

    def adopt(self, kind: str, count: int, claimed: list[Claimed]) -> bool:
        """Items a step claimed for this stream (item, claim token, work item, fields kept for the
        completion) in the room it reserved for ``count``: they are held and written as if this stream
        had claimed them. False when the stream is closing (the caller hands them back)."""
        lane = self.lanes[kind]
        lane.reserved -= count
        if self._closing or self.closed.is_set():
            return False
        now = time.monotonic()
        for item, token, work_item, kept in claimed:
            lane.held[item] = token
            lane.since[item] = now
            if kept is not None:
                self.claims[token] = kept
            lane.adopted.append((item, token, work_item))
        self.wake.set()
        return True

    def look(self, kind: str, partition: int) -> None:
        """Work of this kind may be waiting in this partition."""
        self.lanes[kind].look.add(partition)
        self.wake.set()

    def look_everywhere(self) -> None:
        for lane in self.lanes.values():
            lane.look.update(range(self.hub.partitions))
        self.wake.set()

    def done_with(self, kind: str, item: str) -> None:
        """The worker completed or abandoned this item, or its claim was lost."""
        lane = self.lanes[kind]
        self.claims.pop(lane.held.pop(item, ""), None)
        lane.since.pop(item, None)
        lane.let_go.discard(item)
        if lane.kind.look_after_done:
            lane.look.add(partition_of(instance_of(item), self.hub.partitions))
        self.wake.set()  # room for one more, if the stream is at its limit

    def drain(self) -> None:
        """Hand out nothing more; keep renewing what was handed out (its worker may still complete it)."""
        self.draining = True
        self.wake.set()

    def close(self) -> None:
        """End the stream: what it still holds goes back to the queues."""
        self._closing = True
        self.wake.set()

    async def run(self, write: Write) -> None:
        renewer = asyncio.ensure_future(self._renew_forever())
        try:
            last_write = time.monotonic()
            while not self._closing:
                self.wake.clear()
                sent = 0
                for lane in self.lanes.values():
                    sent += await self._write_adopted(lane, write)  # claimed before any drain began
                    if not self.draining:
                        sent += await self._dispatch(lane, write)
                if sent:
                    last_write = time.monotonic()
                    continue
                ping_in = last_write + self.ping_seconds - time.monotonic()
                try:
                    await asyncio.wait_for(self.wake.wait(), max(0.0, ping_in))
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() - last_write >= self.ping_seconds:
                    await self._write(write, pb.WorkItem(healthPing=pb.HealthPing()))
                    last_write = time.monotonic()
        finally:
            await cancel_and_wait(renewer)
            await self._hand_back()
            self.closed.set()

    async def _write_adopted(self, lane: Lane, write: Write) -> int:
        sent = 0
        while lane.adopted:  # one at a time: what waits behind a blocked write still counts as unwritten
            item, token, work_item = lane.adopted.pop(0)
            if lane.held.get(item) == token:  # not already lost (renewal) or reported through another replica
                await self._write(write, work_item)
                sent += 1
        return sent

    async def _dispatch(self, lane: Lane, write: Write) -> int:
        """Claim and write what is queued now (what was offered first), up to the lane's limit;
        returns how many went out."""
        room = lane.room
        offered, lane.offered = lane.offered, []
        if lane.filter == {}:  # the worker takes no work of this kind
            return 0
        sent = await self._claim(lane, write, offered, room)
        if room - sent <= 0 or not lane.look:
            return sent
        per_partition = CANDIDATES_PER_PARTITION if lane.filter is None else FILTERED_CANDIDATES_PER_PARTITION
        candidates = list(itertools.chain.from_iterable(await asyncio.gather(*(
            self.store.queued(self.hub, lane.kind.code, p, min(room - sent, per_partition))
            for p in self._where_to_look(lane)))))
        if lane.filter is not None and candidates:
            names = await lane.kind.names(self.hub, candidates)
            candidates = [item for item, (name, version) in zip(candidates, names)
                          if name is not None and accepts(lane.filter, name, version)]
        return sent + await self._claim(lane, write, candidates, room - sent)

    async def _claim(self, lane: Lane, write: Write, items: list[str], room: int) -> int:
        """Claim up to ``room`` of ``items`` (all in one round trip) and write what was claimed, in order;
        returns how many went out."""
        chosen: list[tuple[str, int, str]] = []
        for item in dict.fromkeys(items):  # (an item this stream holds may be ready again: its claim decides)
            partition = partition_of(instance_of(item), self.hub.partitions)
            if len(chosen) >= room:  # no room for the rest: look for them later
                lane.look.add(partition)
                continue
            chosen.append((item, partition, claim_token(self.hub.hub, partition, lane.kind.code, item)))
        if not chosen:
            return 0
        results = await asyncio.gather(*(lane.kind.claim(self.hub, item, token, self.lease_ms)
                                         for item, _, token in chosen), return_exceptions=True)
        claimed: dict[str, pb.WorkItem] = {}
        for (item, partition, token), result in zip(chosen, results):
            if result is None or isinstance(result, BaseException):
                continue
            work_item, kept = result
            lane.held[item] = token  # (replacing an earlier claim of the item, whose completion is under way)
            lane.since[item] = time.monotonic()
            lane.let_go.discard(item)
            lane.look.add(partition)  # look again until nothing is left
            if kept is not None:
                self.claims[token] = kept
            claimed[item] = work_item
        if lane.offered and claimed:  # offers that came meanwhile for what was just claimed are spent (it is
            # leased to this stream now: whatever readies it again is told by its completion)
            lane.offered = [item for item in lane.offered if item not in claimed]
        for work_item in claimed.values():
            await self._write(write, work_item)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:  # what was claimed is held (and handed back if the stream ends)
            raise failure
        return len(claimed)

    async def _write(self, write: Write, work_item: pb.WorkItem) -> None:
        """Write to the worker; a worker that takes nothing off the wire ends the stream (its work,
        held or being written, goes back when the stream ends)."""
        try:
            await asyncio.wait_for(write(work_item), self.options.write_timeout_seconds)
        except asyncio.TimeoutError:
            raise StreamStalled(
                f"the worker took no work item off the wire for {self.options.write_timeout_seconds:g} s "
                "(--stream-write-timeout-seconds); its work items were handed back") from None

    def _where_to_look(self, lane: Lane) -> list[int]:
        """The partitions to look at now, starting at a rotating one (so that no partition is always
        served last); the set is emptied: what is found re-adds its partition."""
        wanted, lane.look = lane.look, set()
        start = next(self._offset) % self.hub.partitions
        return sorted(wanted, key=lambda p: (p - start) % self.hub.partitions)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            for lane in self.lanes.values():
                self._let_go_of_old(lane)
                await self._renew(lane)

    def _let_go_of_old(self, lane: Lane) -> None:
        """Stop renewing items held longer than the longest a work item may stay leased: their lease
        expires and the sweep queues them again for another worker (this worker's late completion is
        refused once another claim took the item). They keep their place in the lane until this worker completes or abandons them, so a
        worker that finishes nothing is handed nothing more."""
        oldest = time.monotonic() - self.options.max_hold_seconds
        for item in [item for item, since in lane.since.items() if since < oldest and item not in lane.let_go]:
            log.warning("task hub %r: work item %r was held by one worker for %g s (--max-work-item-seconds): "
                        "it goes back to the queue when its lease expires", self.hub.hub, item,
                        self.options.max_hold_seconds)
            lane.let_go.add(item)

    async def _renew(self, lane: Lane) -> None:
        by_partition: dict[int, list[tuple[str, str]]] = {}
        for item, token in list(lane.held.items()):
            if item not in lane.let_go:
                by_partition.setdefault(partition_of(instance_of(item), self.hub.partitions), []).append((item, token))
        try:
            renewed = await asyncio.gather(*(lane.kind.renew(self.hub, p, items, self.lease_ms)
                                             for p, items in by_partition.items()))
        except errors.StoreUnavailable as exc:
            log.warning("lease renewal failed: %s", exc)
            return
        still = {item for items in renewed for item in items}
        for items in by_partition.values():
            for item, _ in items:
                if item not in still:  # completed through another replica, or the lease was taken over
                    self.done_with(lane.kind.code, item)

    async def _hand_back(self) -> None:
        """The worker went away: its unfinished items are queued again at once (not after the lease);
        their tokens stay good until another claim takes them (the worker may still report)."""
        releases = []
        for lane in self.lanes.values():
            held, lane.held, lane.since, lane.let_go = lane.held, {}, {}, set()
            for item, token in held.items():
                self.claims.pop(token, None)
                releases.append(lane.kind.release(self.hub, item, token, keep_token=True))
        try:
            await asyncio.gather(*releases)
        except errors.StoreError as exc:  # the lease sweep re-queues what is left
            log.warning("could not hand back every work item: %s", exc)
