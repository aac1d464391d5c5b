"""The task hubs this replica serves, and the background work each one costs here.

Every replica runs a promoter (promoter.py) and a relay (relay.py) for every hub on its
Redis, whichever replica created the hub: a hub is served once this replica uses it, or
when the periodic refresh finds it in the hub registry. A hub deleted elsewhere stops
its loops here (on its wake-up, or when the refresh checks it).

What an idle hub costs does not grow with time: its promoter and relay call Redis only
when a wake-up names their hub. Behind the wake-ups, the periodic work of the replica
(the safety sweep of promoters and relays, the lease sweep, the refresh's checks) goes
over the partitions and hubs a bounded share per turn (:class:`Rotation`): a full round
takes SAFETY_CYCLE_SECONDS while there are few partitions, and longer past that
(partitions / SAFETY_MAX_PARTITIONS turns), so Redis sees the same few commands a second
whatever the number of hubs. Hubs that were active lately (a wake-up heard, a call
served) have their leases swept in full at every turn.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time

from .. import errors
from ..store import Store
from ..store.keys import HubKeys
from .entities import Entities
from .orchestrations import Orchestrations
from .promoter import Promoter
from .relay import Relay

log = logging.getLogger(__name__)

UNFINISHED_DELETION_MS = 60_000  # a deletion marked this long ago whose replica is presumed dead
SAFETY_SWEEP_SECONDS = 1.0  # a turn of the safety sweep behind the wake-ups (promoters and relays)
SAFETY_CYCLE_SECONDS = 30.0  # a round over every partition of every hub, while there are few
SAFETY_MAX_PARTITIONS = 8  # partitions a turn of the safety sweep calls at most (past 240 a round is longer)
LEASE_MAX_PARTITIONS = 40  # partitions of idle hubs a turn of the lease sweep reads at most
ACTIVE_SECONDS = 60.0  # a hub heard of this recently has its leases swept in full at every turn
CHECKED_PER_REFRESH = 8  # hubs whose metadata a refresh checks (deleted? retention?), in turn


class Rotation:
    """Round-robin over the (hub, partition) pairs of the hubs served: each turn takes the pairs after the
    last one taken (by name and partition, so hubs coming and going shift nothing), as many as a full
    round in ``cycle_turns`` turns needs, at least one and at most ``most``."""

    def __init__(self, cycle_turns: float, most: int) -> None:
        self.cycle_turns = cycle_turns
        self.most = most
        self._last: tuple[str, int] = ("", -1)

    def turns_per_round(self, hubs: list[HubKeys]) -> int:
        total = sum(hub.partitions for hub in hubs)
        return math.ceil(total / self._share(total)) if total else 0

    def _share(self, total: int) -> int:
        return max(1, min(self.most, math.ceil(total / self.cycle_turns)))

    def take(self, hubs: list[HubKeys]) -> dict[HubKeys, list[int]]:
        pairs = [(hub.hub, p, hub) for hub in sorted(hubs, key=lambda h: h.hub) for p in range(hub.partitions)]
        if not pairs:
            return {}
        start = bisect.bisect_right([(name, p) for name, p, _ in pairs], self._last)
        taken: dict[HubKeys, list[int]] = {}
        for i in range(min(self._share(len(pairs)), len(pairs))):
            name, p, hub = pairs[(start + i) % len(pairs)]
            taken.setdefault(hub, []).append(p)
            self._last = (name, p)
        return taken


class Hubs:
    def __init__(self, store: Store, orchestrations: Orchestrations, entities: Entities, promote_batch: int) -> None:
        self.store = store
        self.orchestrations = orchestrations
        self.entities = entities
        self.promote_batch = promote_batch
        self.promoters: dict[str, Promoter] = {}
        self.relays: dict[str, Relay] = {}
        self._stopping: set[asyncio.Task] = set()
        self.safety = Rotation(SAFETY_CYCLE_SECONDS / SAFETY_SWEEP_SECONDS, SAFETY_MAX_PARTITIONS)
        self.leases: Rotation | None = None  # set by lease_sweep_slice (it knows the sweep's period)
        self.own_retention: dict[str, float | None] = {}  # hub -> its own retention, as the refresh last read it
        self._heard: dict[str, float] = {}  # hub -> monotonic time a wake-up or call last concerned it
        self._checked = ""  # the last hub whose metadata a refresh checked
        self._unmade: set[str] = set()  # registered names without metadata at the last check

    def served(self) -> list[HubKeys]:
        """The hubs whose loops run here."""
        return [promoter.hub for promoter in self.promoters.values()]

    async def get(self, name: str, create: bool = True) -> HubKeys:
        """The hub ``name``, served here. One that does not exist is created (fixing its partition count)
        if ``create``, else HubNotFound (nothing written: with tokens in use, only an admin's
        CreateTaskHub makes a hub)."""
        hub = self.store.cached_hub(name) or (
            await self.store.ensure_hub(name) if create else await self.store.find_hub(name))
        if hub is None:
            raise errors.HubNotFound(name)
        self.heard(name)
        self.serve(hub)  # also when a read cached it first
        return hub

    async def existing(self, name: str) -> HubKeys | None:
        """The hub ``name`` if it exists; nothing is created (for calls that only read or end things)."""
        return self.store.cached_hub(name) or await self.store.find_hub(name)

    async def create(self, name: str, recreate_if_exists: bool) -> HubKeys:
        hub = await self.store.create_task_hub(name, recreate_if_exists)
        self.serve(hub)
        return hub

    async def delete(self, name: str) -> None:
        await self.store.delete_task_hub(name)
        self.forget(name)

    def serve(self, hub: HubKeys) -> None:
        """Run the hub's loops here; replace those of an earlier incarnation of the hub."""
        current = self.promoters.get(hub.hub)
        if current is not None and current.hub == hub:
            return
        if current is not None:
            self.forget(hub.hub)
        self.promoters[hub.hub] = Promoter(self.store, hub, self.promote_batch)
        self.relays[hub.hub] = Relay(self.store, hub, self.orchestrations, self.entities)
        self.promoters[hub.hub].start()
        self.relays[hub.hub].start()

    def forget(self, name: str) -> None:
        """Stop serving a hub (it was deleted): drop it from the cache and stop its loops."""
        self.store.forget_hub(name)
        for loop in (self.promoters.pop(name, None), self.relays.pop(name, None)):
            if loop is not None:
                task = asyncio.ensure_future(loop.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def heard(self, name: str) -> None:
        """Something happened on the hub (a wake-up, a call here): its leases are swept in full a while."""
        self._heard[name] = time.monotonic()

    def safety_sweep(self) -> None:
        """A turn of the safety sweep behind the wake-ups: the next few partitions of the round are called
        by their promoter and read by their relay. A lost wake-up waits at most a round (see the module)."""
        for hub, partitions in self.safety.take(self.served()).items():
            promoter, relay = self.promoters.get(hub.hub), self.relays.get(hub.hub)
            if promoter is not None:
                promoter.sweep_soon(partitions)
            if relay is not None:
                for p in partitions:
                    relay.wake(p)

    def lease_sweep_slice(self, period_seconds: float) -> list[tuple[HubKeys, list[int] | None]]:
        """What a turn of the lease sweep reads: every partition of the hubs active lately, and the next
        few partitions of the others."""
        if self.leases is None:
            self.leases = Rotation(SAFETY_CYCLE_SECONDS / period_seconds, LEASE_MAX_PARTITIONS)
        now = time.monotonic()
        served = self.served()
        active = [hub for hub in served if now - self._heard.get(hub.hub, float("-inf")) < ACTIVE_SECONDS]
        idle = [hub for hub in served if hub not in active]
        return [(hub, None) for hub in active] + list(self.leases.take(idle).items())

    def due_at(self, name: str, due_ms: int, partition: int | None) -> None:
        promoter = self.promoters.get(name)
        if promoter is not None:
            promoter.due_at(due_ms, partition)

    def wake_all(self) -> None:
        """Wake-up messages may have been lost: every promoter calls all its partitions, every relay
        reads its outboxes."""
        for promoter in self.promoters.values():
            promoter.sweep_soon()
        for relay in self.relays.values():
            relay.wake()

    def outbox_written(self, name: str, partition: int | None) -> None:
        relay = self.relays.get(name)
        if relay is not None:
            relay.wake(partition)

    async def refresh(self) -> None:
        """Serve every hub registered on this Redis and keep the hubs served here registered; check a few
        hubs in turn (CHECKED_PER_REFRESH): forget those gone, being deleted or of another generation (a
        missed deletion message, Redis data lost), note their retention, finish deletions that a replica
        left unfinished, and drop names registered whose hub was never made (checked twice in a row)."""
        try:
            await self.store.register_hubs([hub.hub for hub in self.served()])
            names = await self.store.known_hubs()
            for name in names:
                if name in self.promoters:
                    continue
                try:
                    hub = await self.store.find_hub(name)
                except errors.HubDeleting:
                    continue
                if hub is not None:
                    self.serve(hub)
            await self._check(sorted(set(names) | set(self.promoters)))
        except errors.StoreError as exc:
            log.debug("hub refresh skipped: %s", exc)

    async def _check(self, names: list[str]) -> None:
        if not names:
            return
        start = bisect.bisect_right(names, self._checked)
        turn = [names[(start + i) % len(names)] for i in range(min(CHECKED_PER_REFRESH, len(names)))]
        self._checked = turn[-1]
        states = await self.store.hub_states(turn)
        unmade, deleting = [], []
        for name, state in states.items():
            served = self.promoters.get(name)
            if "deleting" in state or "generation" not in state or (
                    served is not None and int(state["generation"]) != served.hub.generation):
                if served is not None or self.store.cached_hub(name) is not None:
                    self.forget(name)
            if not state:
                unmade.append(name)
            if "deleting_ms" in state:
                deleting.append((name, int(state["deleting_ms"])))
            own = state.get("retention_seconds")
            self.own_retention[name] = None if own is None else float(own)
        # a name registered without metadata twice in a row (its creator died between the two steps)
        await self.store.unregister_hubs([name for name in unmade if name in self._unmade])
        self._unmade = (self._unmade - set(turn)) | set(unmade)
        if deleting:
            now_ms = await self.store.server_time_ms()
            for name, since in deleting:
                if now_ms - since > UNFINISHED_DELETION_MS:
                    log.warning("task hub %r: finishing a deletion that another replica left unfinished", name)
                    await self.store.delete_task_hub(name)

    async def stop(self) -> None:
        for loop in [*self.promoters.values(), *self.relays.values()]:
            await loop.stop()
        if self._stopping:
            await asyncio.wait(self._stopping)
