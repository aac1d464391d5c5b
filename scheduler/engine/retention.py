"""Retention: finished instances are purged once they have been finished for longer than their
hub's retention (its own setting, else --retention-seconds; off by default).

A housekeeping job on every replica; in each round one replica takes the turn for a hub (a
short Redis lock), so no work is done twice, and it purges at most BATCH instances per
partition, those that ended first first. Purging is the same script as PurgeInstances:
only a terminal instance goes, with its history and index entries. A hub's own retention is the
one the hubs' refresh last read (it checks each hub in turn), so an idle hub costs no Redis call here.
"""
from __future__ import annotations

import logging
import os

from .. import errors
from ..store import Store
from .hubs import Hubs

log = logging.getLogger(__name__)

BATCH = 100  # instances purged per partition per round
TURN_MS = 30_000  # how long a replica holds a hub's turn (released by expiry)


class Retention:
    def __init__(self, store: Store, hubs: Hubs, default_seconds: float) -> None:
        self.store = store
        self.hubs = hubs
        self.default_seconds = default_seconds
        self.owner = f"{os.getpid()}-{id(self):x}"

    async def sweep(self) -> int:
        """One round over the hubs served here; returns how many instances went."""
        purged = 0
        for hub in self.hubs.served():
            try:
                if hub.hub not in self.hubs.own_retention:
                    continue  # its own setting (which may keep everything) is not known yet: see Hubs.refresh
                own = self.hubs.own_retention[hub.hub]
                seconds = self.default_seconds if own is None else own
                if seconds <= 0 or not await self.store.take_turn(hub, "retention", self.owner, TURN_MS):
                    continue
                before_ms = await self.store.server_time_ms() - int(seconds * 1000)
                for partition in range(hub.partitions):
                    ids = await self.store.ended_before(hub, partition, before_ms, BATCH)
                    purged += await self.store.purge_instances(hub, ids, before_ms)
            except errors.StoreError as exc:
                log.debug("retention round for task hub %r skipped: %s", hub.hub, exc)
        if purged:
            log.info("retention: purged %d finished instance(s)", purged)
        return purged
