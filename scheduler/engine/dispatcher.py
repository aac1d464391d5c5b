"""The dispatcher: this replica's work streams and what it knows about the work they hold.

It owns the open streams of each hub (engine/streams.py), the fields of the orchestration
claims they hold (so a completion arriving on this replica needs not read them again),
the offers of work that a request on this replica just queued, and the wake-ups that say
where work may be. The gRPC surface opens streams through it; the engine's rules tell it
what they queued and finished; the wake-ups and the lease sweep tell it where to look.
Any replica accepts any completion: what it keeps here only saves round trips. A completion
refused because Redis is away makes its worker give up on the item: the item is then handed
back in the background as soon as Redis answers (see :meth:`Dispatcher.give_back`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

import prometheus_client

from .. import errors
from ..config import Config
from ..protocol import ACTIVITY, ENTITY, ORCHESTRATION, instance_of
from ..store import Store
from ..store.keys import WORK_QUEUES, HubKeys
from .loops import MAX_BACKOFF, MIN_BACKOFF, cancel_and_wait
from .streams import Claimed, Lane, StreamOptions, WorkStream, Write
from .work_kinds import ActivityWork, EntityWork, FailBatch, FailClaimed, NameFilter, OrchestrationWork

log = logging.getLogger(__name__)

SWEEP_BATCH = 100  # expired leases released per partition per sweep
# work claimed for a stream that it has not written yet: a stream whose worker stopped reading (its writes
# block) is given no more than this
MAX_UNWRITTEN = 16
_QUEUE_KINDS = {queue: kind for kind, queue in WORK_QUEUES.items()}
# a worker's report refused for these (nothing written, or not known) was for a passing reason: Redis was away
PASSING = (errors.StoreUnavailable, errors.StoreOutcomeUnknown, errors.RedisOutOfMemory)
# Work items whose lease ran out before their worker reported (the worker or its replica died, or was cut
# off), re-queued by this replica's sweep: a steady rise means workers are dying or stalling.
LEASES_EXPIRED = prometheus_client.Counter("dt_leases_expired_total",
                                           "Work items re-queued because their lease expired", ["hub"])


class Dispatcher:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.options = StreamOptions(config.lease_seconds, config.health_ping_seconds,
                                     config.stream_write_timeout_seconds, config.max_work_item_seconds)
        self.max_stream_work_items = config.max_stream_work_items
        self.kinds = {ORCHESTRATION: OrchestrationWork(store, config.max_message_bytes, self._fail_claimed),
                      ACTIVITY: ActivityWork(store, config.max_message_bytes),
                      ENTITY: EntityWork(store, config.max_message_bytes, self._fail_batch)}
        # set by the engine (the rules are built after the dispatcher they use): end a claimed episode or
        # entity batch that cannot go to a worker by failing the orchestration or the batch's operations
        self.fail_claimed: FailClaimed | None = None
        self.fail_batch: FailBatch | None = None
        self.draining = False  # shutting down: no new streams, and streams hand out nothing more
        self._streams: dict[str, set[WorkStream]] = defaultdict(set)  # hub -> this replica's open streams
        self._claims: dict[str, dict[str, bytes]] = {}  # claim token -> instance fields at the claim
        self._giving_back: set[asyncio.Task] = set()  # hand-backs waiting for Redis (see give_back)

    def streams(self, hub_name: str) -> set[WorkStream]:
        return self._streams.get(hub_name, set())

    async def serve(self, hub: HubKeys, limits: dict[str, int], filters: dict[str, NameFilter],
                    write: Write) -> None:
        """Run a work stream for a worker until it goes away: ``limits`` (what its worker declares it
        runs at once; 0: not declared) and ``filters`` (None: any) of each kind of work it takes. A
        stream holds at most its worker's limit, and never more than --max-stream-work-items."""
        if self.draining:
            raise errors.Draining()
        cap = self.max_stream_work_items
        lanes = [Lane(kind, min(limits.get(code) or cap, cap), filters.get(code), hub.partitions)
                 for code, kind in self.kinds.items()]
        stream = WorkStream(self.store, hub, lanes, self.options, self._claims)
        self._streams[hub.hub].add(stream)
        try:
            await stream.run(write)
        finally:
            self._streams[hub.hub].discard(stream)

    def all_streams(self) -> list[WorkStream]:
        return [stream for streams in self._streams.values() for stream in streams]

    def held(self) -> int:
        """Work items that this replica's streams have handed out and their workers not yet reported."""
        return sum(stream.held for stream in self.all_streams())

    async def drain(self, grace_seconds: float) -> None:
        """Shut down gracefully: streams hand out nothing more (new ones are refused), work already handed
        out may be completed for up to ``grace_seconds``; then what is still held goes back to the
        queues and the streams end, so their workers reconnect to another replica."""
        self.draining = True
        for stream in self.all_streams():
            stream.drain()
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while self.held() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self.held():
            log.warning("shutting down with %d work item(s) not completed within %g s: they go back to the queues",
                        self.held(), grace_seconds)
        streams = self.all_streams()
        for stream in streams:
            stream.close()
        await asyncio.gather(*(stream.closed.wait() for stream in streams))
        for task in list(self._giving_back):  # Redis is still away: the leases expire and the sweep re-queues
            await cancel_and_wait(task)

    def work_available(self, hub_name: str, queue: tuple[str, int] | None = None) -> None:
        """A work queue of the hub stopped being empty (``queue``: (name, partition), if known; None:
        maybe any): wake this replica's streams to look there."""
        kind = None if queue is None else _QUEUE_KINDS.get(queue[0])
        for stream in self.streams(hub_name):
            stream.look(kind, queue[1]) if kind else stream.look_everywhere()

    def offer(self, hub_name: str, kind: str, items: list[str]) -> None:
        """Work a request on this replica just queued: offer it to the least busy of this replica's
        streams that take any work, which claims it at once."""
        streams = [s for s in self.streams(hub_name) if s.takes_offers]
        if streams and items:
            stream = min(streams, key=lambda s: s.held)
            for item in items:
                stream.offer(kind, item)

    def reserve(self, hub_name: str, kind: str, count: int) -> WorkStream | None:
        """The least busy of this replica's streams that take any work and have room for ``count`` items of
        ``kind``, with that room reserved for work a step is about to claim for it (see
        WorkStream.adopt); None if there is none."""
        streams = [s for s in self.streams(hub_name) if s.takes_offers and not s.draining
                   and s.lanes[kind].room >= count and s.unwritten < MAX_UNWRITTEN]
        if not streams:
            return None
        stream = min(streams, key=lambda s: s.held)
        stream.reserve(kind, count)
        return stream

    async def hand_to(self, stream: WorkStream, hub: HubKeys, kind: str, reserved: int,
                      claimed: list[Claimed]) -> None:
        """Work items (item, claim token, work item) that a step claimed for ``stream`` in the room it
        reserved: the stream writes them; if it closed meanwhile they go back to the queue."""
        if not stream.adopt(kind, reserved, claimed):
            await asyncio.gather(*(self.kinds[kind].release(hub, item, token) for item, token, _, _ in claimed))

    async def _fail_claimed(self, *args) -> None:
        await self.fail_claimed(*args)

    async def _fail_batch(self, *args) -> None:
        await self.fail_batch(*args)

    def claimed_fields(self, token: str) -> dict[str, bytes] | None:
        """The instance fields at the claim, if a stream of this replica holds it (taken: once)."""
        return self._claims.pop(token, None)

    def finished(self, hub_name: str, kind: str, item: str, token: str) -> None:
        """The claim ``token`` on a work item was completed, abandoned or refused through this replica:
        the stream of this replica that handed it out under that claim (if any) has room again."""
        for stream in self.streams(hub_name):
            if stream.lanes[kind].held.get(item) == token:
                stream.done_with(kind, item)

    @contextlib.contextmanager
    def reported(self, hub: HubKeys, kind: str, item: str, token: str) -> Iterator[None]:
        """Around a worker's completion or abandon: whether it is applied or refused (its claim was
        lost, or Redis was away: see give_back), the worker is done with the item, so its stream has
        room again."""
        try:
            yield
        except errors.LeaseLost:
            self.finished(hub.hub, kind, item, token)
            raise
        except PASSING:
            self.give_back(hub, kind, item, token)
            raise
        self.finished(hub.hub, kind, item, token)

    def give_back(self, hub: HubKeys, kind: str, item: str, token: str) -> None:
        """A worker's report on an item was refused because Redis was away: its worker gives up on the
        item, so no stream here holds or renews it any more, and it is handed back, its token kept (a
        report retried meanwhile still applies until another claim takes the item), as soon as Redis
        answers (retried with back-off, in the background). Any replica may do this: one that holds the
        item elsewhere finds its lease gone at its next renewal."""
        self.finished(hub.hub, kind, item, token)
        task = asyncio.get_running_loop().create_task(self._give_back(hub, kind, item, token),
                                                      name=f"give back {kind} {item}")
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, hub: HubKeys, kind: str, item: str, token: str) -> None:
        backoff = MIN_BACKOFF
        while True:
            try:
                if await self.kinds[kind].release(hub, item, token, keep_token=True):
                    log.info("task hub %r: work item %r, whose worker gave up on it while Redis was away, "
                             "was handed back", hub.hub, item)
                    self.offer(hub.hub, kind, [item])
                return  # (not released: it was applied after all, or another claim took it)
            except errors.HubGone:
                return
            except PASSING as exc:
                log.debug("handing back work item %r: %s; retrying in %.2fs", item, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def abandon(self, hub: HubKeys, kind: str, item: str, token: str) -> None:
        """Hand a work item back under its claim (LeaseLost when the claim is not current); its worker gave
        up on it, so its token is refused from now on."""
        with self.reported(hub, kind, item, token):
            if not await self.kinds[kind].release(hub, item, token):
                raise errors.LeaseLost(instance_of(item))
        self.offer(hub.hub, kind, [item])  # queued again

    def look_everywhere(self) -> None:
        """Wake-ups may have been lost (the subscription reconnected): every stream looks everywhere."""
        for stream in self.all_streams():
            stream.look_everywhere()

    async def safety_look(self, hubs: list[HubKeys]) -> None:
        """The rare check behind the wake-ups (streams do no periodic look of their own): the streams of a
        hub whose queue holds work look there. One pipelined round trip of queue lengths per hub with
        streams here."""
        for hub in hubs:
            streams = self.streams(hub.hub)
            if not streams:
                continue
            try:
                lengths = await self.store.queue_lengths(hub)
            except errors.HubGone:
                continue
            except errors.StoreError as exc:
                log.debug("safety look skipped: %s", exc)
                return
            for (kind, partition), length in lengths.items():
                if length:
                    for stream in streams:
                        stream.look(kind, partition)

    async def sweep(self, hubs: list[tuple[HubKeys, list[int] | None]]) -> None:
        """Re-queue work whose lease expired (a worker or replica died) in these partitions of each hub
        (None: all); any replica may run it."""
        for hub, partitions in hubs:
            try:
                swept = await self.store.sweep_expired_leases(hub, partitions, SWEEP_BATCH)
            except errors.HubGone:
                continue  # deleted meanwhile: the hub refresh stops serving it
            except errors.StoreError as exc:
                log.debug("lease sweep skipped: %s", exc)
                return
            if swept:
                LEASES_EXPIRED.labels(hub.hub).inc(len(swept))
                log.info("task hub %r: re-queued %d work item(s) whose lease expired", hub.hub, len(swept))
                self.work_available(hub.hub)
