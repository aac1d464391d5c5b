"""Dispatcher: one work stream per connected worker, handing out work items under leases.

A stream claims ready instances and queued activities of its hub (any partition;
competing streams on any replica claim each item once), writes them to its worker, renews the leases of
what it handed out while it lives, and hands them back when it closes. Leases of a
replica that died expire and any replica's sweep re-queues them.

A stream looks only where work may be: the partitions whose queue a pub/sub "work"
wake-up named (sent when a queue stops being empty), those it took work from last
time (until a look finds nothing more), and the partition of an orchestration it
just finished (its completion may have made it ready again). A few times a second it
looks everywhere, in case a wake-up was lost, and it sends a HealthPing at the
configured interval. Work that a request on this replica just made ready (a started
instance, queued activities, an activity result) is offered to one of its streams
by id, which tries to claim it at once, before any pub/sub round trip or look.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from . import convert, errors
from ._proto import orchestrator_service_pb2 as pb
from .keys import HubKeys, partition_of
from .loops import cancel_and_wait
from .store import Store
from .store_activities import activity_instance, activity_token
from .store_dispatch import claim_token

log = logging.getLogger(__name__)

RESCAN_SECONDS = 0.25
CANDIDATES_PER_PARTITION = 8
FILTERED_CANDIDATES_PER_PARTITION = 64  # a filtering stream looks further, past work it does not take

# name -> accepted versions (empty: any version); None: no filtering. As the SDK's reference backend.
NameFilter = dict[str, frozenset[str]] | None


def name_filter(filters) -> NameFilter:
    """The accepted names and versions of OrchestrationFilter or ActivityFilter messages."""
    accepted: dict[str, frozenset[str]] = {}
    for f in filters:
        accepted[f.name] = accepted.get(f.name, frozenset()) | frozenset(f.versions)
    return accepted


def accepts(flt: NameFilter, name: str, version: str) -> bool:
    if flt is None:
        return True
    versions = flt.get(name)
    return versions is not None and (not versions or version in versions)


class WorkStream:
    def __init__(self, store: Store, hub: HubKeys, lease_seconds: float, ping_seconds: float,
                 max_items: int = 0, max_activities: int = 0, orchestration_filter: NameFilter = None,
                 activity_filter: NameFilter = None, claims: dict[str, dict[str, bytes]] | None = None) -> None:
        self.store = store
        self.hub = hub
        self.lease_ms = int(lease_seconds * 1000)
        self.ping_seconds = ping_seconds
        self.max_items = max_items  # 0: no limit
        self.max_activities = max_activities  # 0: no limit
        self.orchestration_filter = orchestration_filter
        self.activity_filter = activity_filter
        self.held: dict[str, str] = {}  # instance id -> claim token, for what this stream handed out
        self.held_activities: dict[str, str] = {}  # activity item -> claim token
        # claim token -> instance hash fields at the claim, while held: shared by the replica's streams, so
        # that a completion arriving here needs not read them again (they do not change during a claim)
        self.claims = {} if claims is None else claims
        self.wake = asyncio.Event()
        self._offset = itertools.count()
        everywhere = range(hub.partitions)
        self._look = {"ready": set(everywhere), "activities": set(everywhere)}  # partitions to look at next
        self._offered: dict[str, list[str]] = {"ready": [], "activities": []}  # ids to try first

    @property
    def takes_offers(self) -> bool:
        """True when the stream takes any work (no filter) and has room for more."""
        return (self.orchestration_filter is None and self.activity_filter is None
                and (not self.max_items or len(self.held) < self.max_items)
                and (not self.max_activities or len(self.held_activities) < self.max_activities))

    def offer(self, queue: str, item: str) -> None:
        """An instance ("ready") or activity item ("activities") was just queued: try it first."""
        self._offered[queue].append(item)
        self.wake.set()

    def look(self, queue: str, partition: int) -> None:
        """Work may be waiting in this queue ("ready" or "activities") of this partition."""
        self._look[queue].add(partition)
        self.wake.set()

    def look_everywhere(self) -> None:
        for partitions in self._look.values():
            partitions.update(range(self.hub.partitions))
        self.wake.set()

    def done_with(self, instance_id: str) -> None:
        """The worker completed or abandoned this orchestration work item (on this replica)."""
        self.claims.pop(self.held.pop(instance_id, ""), None)
        self.look("ready", partition_of(instance_id, self.hub.partitions))

    def done_with_activity(self, item: str) -> None:
        self.held_activities.pop(item, None)
        self.wake.set()  # room for one more, if the stream is at its limit

    async def run(self, write: Callable[[pb.WorkItem], Awaitable[None]]) -> None:
        renewer = asyncio.ensure_future(self._renew_forever())
        try:
            last_write = time.monotonic()
            while True:
                self.wake.clear()
                sent = await self._dispatch(write) + await self._dispatch_activities(write)
                if sent:
                    last_write = time.monotonic()
                    continue
                ping_in = last_write + self.ping_seconds - time.monotonic()
                try:
                    await asyncio.wait_for(self.wake.wait(), max(0.0, min(RESCAN_SECONDS, ping_in)))
                except asyncio.TimeoutError:
                    self.look_everywhere()  # a wake-up may have been lost
                if time.monotonic() - last_write >= self.ping_seconds:
                    await write(pb.WorkItem(healthPing=pb.HealthPing()))
                    last_write = time.monotonic()
        finally:
            await cancel_and_wait(renewer)
            await self._hand_back()

    async def _dispatch(self, write) -> int:
        """Claim and write what is ready now (what was offered first), up to the stream's limit;
        returns how many went out."""
        room = self.max_items - len(self.held) if self.max_items else 1 << 30
        offered, self._offered["ready"] = self._offered["ready"], []
        sent = await self._claim_orchestrations(write, offered, room)
        if room - sent <= 0 or not self._look["ready"]:
            return sent
        per_partition = CANDIDATES_PER_PARTITION if self.orchestration_filter is None else \
            FILTERED_CANDIDATES_PER_PARTITION
        candidates = list(itertools.chain.from_iterable(await asyncio.gather(*(
            self.store.ready_candidates(self.hub, p, min(room - sent, per_partition))
            for p in self._where_to_look("ready")))))
        if self.orchestration_filter is not None and candidates:
            names = await self.store.instance_names(self.hub, candidates)
            candidates = [iid for iid, (name, version) in zip(candidates, names)
                          if name is not None and accepts(self.orchestration_filter, name, version)]
        return sent + await self._claim_orchestrations(write, candidates, room - sent)

    async def _claim_orchestrations(self, write, instance_ids: list[str], room: int) -> int:
        sent = 0
        for iid in instance_ids:
            if sent >= room:  # no room for the rest: look for them later
                self._look["ready"].add(partition_of(iid, self.hub.partitions))
                continue
            token = claim_token(self.hub, iid)
            claim = await self.store.claim_orchestration(self.hub, iid, token, self.lease_ms,
                                                         convert.orchestrator_started())
            if claim is None:
                continue
            self.held[iid] = token
            self.claims[token] = claim.fields
            self._look["ready"].add(partition_of(iid, self.hub.partitions))  # look again until nothing is left
            new_events = [claim.fields["episode_start"], *claim.new_events]
            await write(convert.orchestrator_work_item(iid, claim.fields.get("execution_id"), claim.past_events,
                                                       new_events, token))
            sent += 1
        return sent

    async def _dispatch_activities(self, write) -> int:
        room = self.max_activities - len(self.held_activities) if self.max_activities else 1 << 30
        offered, self._offered["activities"] = self._offered["activities"], []
        sent = await self._claim_activities(write, offered, room)
        if room - sent <= 0 or not self._look["activities"]:
            return sent
        per_partition = CANDIDATES_PER_PARTITION if self.activity_filter is None else \
            FILTERED_CANDIDATES_PER_PARTITION
        queued = list(itertools.chain.from_iterable(await asyncio.gather(*(
            self.store.queued_activities(self.hub, p, min(room - sent, per_partition))
            for p in self._where_to_look("activities")))))
        if self.activity_filter is not None and queued:
            requests = await self.store.activity_requests(self.hub, queued)
            queued = [item for item, raw in zip(queued, requests) if raw is not None and accepts(
                self.activity_filter, *_name_version(pb.ActivityRequest.FromString(raw)))]
        return sent + await self._claim_activities(write, queued, room - sent)

    async def _claim_activities(self, write, items: list[str], room: int) -> int:
        sent = 0
        for item in items:
            partition = partition_of(activity_instance(item), self.hub.partitions)
            if sent >= room:  # no room for the rest: look for them later
                self._look["activities"].add(partition)
                continue
            token = activity_token(self.hub, item)
            payload = await self.store.claim_activity(self.hub, item, token, self.lease_ms)
            if payload is None:
                continue
            self.held_activities[item] = token
            self._look["activities"].add(partition)  # look again until nothing is left
            await write(pb.WorkItem(activityRequest=pb.ActivityRequest.FromString(payload), completionToken=token))
            sent += 1
        return sent

    def _where_to_look(self, queue: str) -> list[int]:
        """The partitions to look at in ``queue`` now, starting at a rotating one (so that no partition
        is always served last); the set is emptied: what is found re-adds its partition."""
        wanted, self._look[queue] = self._look[queue], set()
        start = next(self._offset) % self.hub.partitions
        return sorted(wanted, key=lambda p: (p - start) % self.hub.partitions)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            by_partition: dict[int, list[tuple[str, str]]] = {}
            for iid, token in list(self.held.items()):
                by_partition.setdefault(partition_of(iid, self.hub.partitions), []).append((iid, token))
            try:
                renewed = await asyncio.gather(*(
                    self.store.renew_leases(self.hub, p, items, self.lease_ms) for p, items in by_partition.items()))
            except errors.StoreUnavailable as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            still = {iid for ids in renewed for iid in ids}
            lost = [iid for items in by_partition.values() for iid, _ in items if iid not in still]
            for iid in lost:  # completed through another replica, or the lease was taken over
                self.done_with(iid)
            await self._renew_activities()

    async def _renew_activities(self) -> None:
        by_partition: dict[int, list[tuple[str, str]]] = {}
        for item, token in list(self.held_activities.items()):
            p = partition_of(activity_instance(item), self.hub.partitions)
            by_partition.setdefault(p, []).append((item, token))
        try:
            renewed = await asyncio.gather(*(self.store.renew_activity_leases(self.hub, p, items, self.lease_ms)
                                             for p, items in by_partition.items()))
        except errors.StoreUnavailable as exc:
            log.warning("activity lease renewal failed: %s", exc)
            return
        still = {item for items in renewed for item in items}
        for items in by_partition.values():
            for item, _ in items:
                if item not in still:
                    self.done_with_activity(item)

    async def _hand_back(self) -> None:
        """The worker went away: its unfinished items are ready again at once (not after the lease)."""
        held, self.held = self.held, {}
        activities, self.held_activities = self.held_activities, {}
        for token in held.values():
            self.claims.pop(token, None)
        try:
            await asyncio.gather(
                *(self.store.release_orchestration(self.hub, iid, token) for iid, token in held.items()),
                *(self.store.release_activity(self.hub, item, token) for item, token in activities.items()))
        except errors.StoreError as exc:  # the lease sweep re-queues what is left
            log.warning("could not hand back every work item: %s", exc)


def _name_version(request: pb.ActivityRequest) -> tuple[str, str]:
    return request.name, request.version.value if request.HasField("version") else ""
