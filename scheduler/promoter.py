"""Scheduler worker: promotes due entries of one task hub to its ready set at their time.

Every replica runs one per hub; the promote script removes what it moves, so an
entry is promoted exactly once however many promoters race. The promoter sleeps
until the earliest due time that Redis reported (a relative delay, so the
replica's own wall clock never matters) and is woken early by the pub/sub
message that a start with an earlier due time publishes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from .keys import HubKeys
from .loops import Loop
from .store import Promotion, Store

log = logging.getLogger(__name__)

# A safety net for a missed wake-up message; it does not bound precision.
MAX_SLEEP_SECONDS = 1.0

PROMOTED = Counter("dt_promoted_total", "Due entries promoted to ready", ["hub"])
PROMOTION_LAG = Histogram(
    "dt_promotion_lag_seconds", "Promotion time minus due time (Redis clock)", ["hub"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class Promoter:
    def __init__(self, store: Store, hub: HubKeys, batch: int = 1000,
                 on_promoted: Callable[[Promotion], None] | None = None) -> None:
        self.store = store
        self.hub = hub
        self.batch = batch
        self.on_promoted = on_promoted
        self._next_due_ms: int | None = None
        self._loop = Loop(f"promoter[{hub.hub}]", self._step, MAX_SLEEP_SECONDS)
        self._lag = PROMOTION_LAG.labels(hub.hub)
        self._count = PROMOTED.labels(hub.hub)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def due_at(self, due_ms: int) -> None:
        """An entry due at ``due_ms`` was added: wake now if that is before our next planned step."""
        if self._next_due_ms is None or due_ms < self._next_due_ms:
            self._loop.wake()

    async def _step(self) -> float:
        result = await self.store.promote_due(self.hub, self.batch)
        if result.promoted_due_ms:
            self._count.inc(len(result.promoted_due_ms))
            for due in result.promoted_due_ms:
                self._lag.observe((result.now_ms - due) / 1000)
            log.info("task hub %r: promoted %d due instance(s), lag up to %d ms", self.hub.hub,
                     len(result.promoted_due_ms), result.now_ms - min(result.promoted_due_ms))
            if self.on_promoted is not None:
                self.on_promoted(result)
        self._next_due_ms = result.next_due_ms
        if result.more:
            return 0
        if result.next_due_ms is None:
            return MAX_SLEEP_SECONDS
        return max(result.next_due_ms - result.now_ms, 1) / 1000
