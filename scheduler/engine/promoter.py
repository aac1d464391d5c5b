"""Scheduler worker: promotes due entries of one task hub to its ready set at their time.

Every replica runs one per hub; the promote script removes what it moves, so an
entry is promoted exactly once however many promoters race. The promoter sleeps
until the earliest due time that Redis reported (a relative delay, so the
replica's own wall clock never matters) and is woken early by the pub/sub
message that a start with an earlier due time publishes.

That message names the entry's partition and due time; the promoter keeps it as a
hint for that partition (also when it is due after the next planned step), so the
entry is promoted at its time without calling every partition. A hint is dropped
after a call to its partition that was sent after the hint arrived: Redis ran that
call after the script that added the entry, so its reply accounts for the entry.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from .. import tracing
from ..protocol import due_ms, ts_from_text
from ..store import Promotion, Store
from ..store.keys import HubKeys
from . import spans
from .loops import Loop

log = logging.getLogger(__name__)

# An idle promoter calls Redis only when woken: by a wake-up message, at the earliest due time it
# knows, or by the replica's safety sweep (engine/hubs.py), which hands it a few partitions at a
# time to call, so that an idle hub costs nothing of its own. This cap only bounds a sleep.
MAX_SLEEP_SECONDS = 3600.0
LOG_EVERY_SECONDS = 5.0

PROMOTED = Counter("dt_promoted_total", "Due entries promoted to ready", ["hub"])
PROMOTION_LAG = Histogram(
    "dt_promotion_lag_seconds", "Promotion time minus due time (Redis clock)", ["hub"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class Promoter:
    """Sleeps until the earliest due time; on waking, calls only the partitions whose head is due
    (all of them at its start, after a wake-up message without a partition or an error; those the
    safety sweep names)."""

    def __init__(self, store: Store, hub: HubKeys, batch: int = 1000,
                 on_promoted: Callable[[Promotion], None] | None = None) -> None:
        self.store = store
        self.hub = hub
        self.batch = batch
        self.on_promoted = on_promoted
        self._next_due_ms: int | None = None
        self._heads: dict[int, int | None] = {}  # partition -> its earliest due ms (Redis clock)
        self._hints: dict[int, int] = {}  # partition -> earliest due ms of an entry announced since
        self._hint_count = 0  # hints received so far (to tell which arrived during a call)
        self._hinted_at: dict[int, int] = {}  # partition -> _hint_count when its last hint arrived
        self._sweep_all = True
        self._sweep_parts: set[int] = set()  # partitions to call at the next step whatever their head
        self._clock: tuple[int, float] = (0, 0.0)  # (Redis ms, local monotonic s) of the last call
        self._unlogged, self._last_log = (0, 0), float("-inf")
        self._loop = Loop(f"promoter[{hub.hub}]", self._step, MAX_SLEEP_SECONDS)
        self._lag = PROMOTION_LAG.labels(hub.hub)
        self._count = PROMOTED.labels(hub.hub)
        self._tracing: set[asyncio.Task] = set()  # spans of promotions being emitted (tracing on)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        for task in list(self._tracing):
            task.cancel()

    def due_at(self, due_ms: int, partition: int | None = None) -> None:
        """An entry due at ``due_ms`` was added (to ``partition``, if known): remember it, and wake now
        if that is before our next planned step."""
        if partition is None:
            self._sweep_all = True
        else:
            self._hints[partition] = min(due_ms, self._hints.get(partition, due_ms))
            self._hint_count += 1
            self._hinted_at[partition] = self._hint_count
        if self._next_due_ms is None or due_ms < self._next_due_ms:
            self._loop.wake()

    def sweep_soon(self, partitions: list[int] | None = None) -> None:
        """Wake-up messages may have been lost: call these partitions (None: every one) now."""
        if partitions is None:
            self._sweep_all = True
        else:
            self._sweep_parts.update(partitions)
        self._loop.wake()

    def _known_heads(self) -> dict[int, int]:
        """Partition -> the earliest due ms known for it, from the last calls and the hints since."""
        heads = {p: h for p, h in self._heads.items() if h is not None}
        for p, hint in self._hints.items():
            heads[p] = min(hint, heads.get(p, hint))
        return heads

    def _partitions_to_call(self) -> list[int] | None:
        """None (all) when a sweep is due; else the partitions whose head is due by the estimated Redis time."""
        if self._sweep_all:
            return None
        redis_ms, at = self._clock
        estimate = redis_ms + (time.monotonic() - at) * 1000
        due = {p for p, head in self._known_heads().items() if head <= estimate}
        return sorted(due | self._sweep_parts)

    async def _step(self) -> float:
        partitions = self._partitions_to_call()
        self._sweep_parts = set()
        if partitions is None:
            self._sweep_all = False
        elif not partitions:
            return self._delay(*self._clock)
        hints_before = self._hint_count
        try:
            if tracing.active is None:
                result = await self.store.promote_due(self.hub, self.batch, partitions)
            else:  # which entries moved, for the spans of delayed starts
                result = await self.store.promote_due(self.hub, self.batch, partitions, members=True)
        except Exception:
            self._sweep_all = True
            raise
        self._clock = (result.now_ms, time.monotonic())
        self._heads.update(result.heads)
        for p in result.heads:
            if p in self._hints and self._hinted_at[p] <= hints_before:  # the call saw that entry
                del self._hints[p], self._hinted_at[p]
        if result.promoted_due_ms:
            self._count.inc(len(result.promoted_due_ms))
            for due in result.promoted_due_ms:
                self._lag.observe((result.now_ms - due) / 1000)
            self._report(len(result.promoted_due_ms), result.now_ms - min(result.promoted_due_ms))
            if self.on_promoted is not None:
                self.on_promoted(result)
            if result.promoted:
                task = asyncio.create_task(self._trace(result.promoted, result.now_ms))
                self._tracing.add(task)
                task.add_done_callback(self._tracing.discard)
        if result.more:
            return 0
        return self._delay(*self._clock)

    async def _trace(self, promoted: list[tuple[str, int]], now_ms: int) -> None:
        """Emit the promotion span of each delayed start among ``promoted`` (timers and delayed signals
        have none): read apart, so the promoter does not wait for it."""
        starts = [(member, due) for member, due in promoted if not member.startswith("@")]  # "@": entities
        try:
            values = await self.store.instance_fields(self.hub, [member for member, _ in starts],
                                                      ("trace", "name", "scheduled_start"))
        except Exception as exc:  # noqa: BLE001 - a span is not worth an error in the loop
            log.debug("task hub %r: no promotion spans: %s", self.hub.hub, exc)
            return
        for (instance_id, due), (trace, name, scheduled) in zip(starts, values):
            ref = None if trace is None or tracing.active is None else tracing.SpanRef.decode(trace)
            if ref is not None and scheduled is not None and due_ms(ts_from_text(scheduled)) == due:
                spans.promoted(ref, instance_id, (name or b"").decode(), due, now_ms)

    def _report(self, count: int, lag_ms: int) -> None:
        """Log promotions at most every LOG_EVERY_SECONDS (the first one after a quiet spell at once)."""
        self._unlogged = (self._unlogged[0] + count, max(self._unlogged[1], lag_ms))
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            log.info("task hub %r: promoted %d due instance(s), lag up to %d ms", self.hub.hub, *self._unlogged)
            self._unlogged, self._last_log = (0, 0), now

    def _delay(self, redis_ms: int, at: float) -> float:
        """Seconds until the earliest known head is due (relative, so our wall clock never matters)."""
        heads = self._known_heads().values()
        self._next_due_ms = min(heads, default=None)
        if self._next_due_ms is None:
            return MAX_SLEEP_SECONDS
        now_estimate = redis_ms + (time.monotonic() - at) * 1000
        return max(self._next_due_ms - now_estimate, 1) / 1000
