"""The task hubs this replica serves, and the background loops each one runs here.

Every replica runs a promoter (promoter.py) and a relay (relay.py) for every hub on its
Redis, whichever replica created the hub: a hub is served once this replica uses it, or
when the periodic refresh finds it in the hub registry. A hub deleted elsewhere stops
its loops here (on its wake-up, or at the next refresh at the latest).
"""
from __future__ import annotations

import asyncio
import logging

from .. import errors
from ..store import Store
from ..store.keys import HubKeys
from .entities import Entities
from .orchestrations import Orchestrations
from .promoter import Promoter
from .relay import Relay

log = logging.getLogger(__name__)

UNFINISHED_DELETION_MS = 60_000  # a deletion marked this long ago whose replica is presumed dead


class Hubs:
    def __init__(self, store: Store, orchestrations: Orchestrations, entities: Entities, promote_batch: int) -> None:
        self.store = store
        self.orchestrations = orchestrations
        self.entities = entities
        self.promote_batch = promote_batch
        self.promoters: dict[str, Promoter] = {}
        self.relays: dict[str, Relay] = {}
        self._stopping: set[asyncio.Task] = set()

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
        """Serve every hub registered on this Redis; forget cached hubs that are gone, being deleted or
        of another generation (a missed deletion message, Redis data lost); keep the hubs served here
        registered; finish deletions that a replica left unfinished."""
        try:
            for name in await self.store.revalidate_hubs():
                self.forget(name)
            await self.store.register_hubs([hub.hub for hub in self.served()])
            for name in await self.store.known_hubs():
                try:
                    hub = await self.store.find_hub(name)
                except errors.HubDeleting:
                    continue
                if hub is not None:
                    self.serve(hub)
            for name in await self.store.unfinished_deletions(UNFINISHED_DELETION_MS):
                log.warning("task hub %r: finishing a deletion that another replica left unfinished", name)
                await self.store.delete_task_hub(name)
        except errors.StoreError as exc:
            log.debug("hub refresh skipped: %s", exc)

    async def stop(self) -> None:
        for loop in [*self.promoters.values(), *self.relays.values()]:
            await loop.stop()
        if self._stopping:
            await asyncio.wait(self._stopping)
