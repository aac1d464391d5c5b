"""What idle task hubs cost Redis: with 100 hubs of 16 partitions served by three idle replicas, Redis sees a
few commands a second in all, not a few per hub and partition (INFO commandstats over a window)."""
from __future__ import annotations

import asyncio
import time

from server_helpers import eventually

HUBS = 100
PARTITIONS = 16
WINDOW_SECONDS = 6.0
# Measured ~100/s after the change (and ~1,400-1,700/s before it); the bound leaves a wide margin for a
# loaded machine (a slow replica does less, not more) while staying far below the old cost.
MAX_COMMANDS_PER_SECOND = 400


async def _calls(redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


def _settled(app) -> bool:
    """Every hub served, and each promoter and relay done with the full look it takes when it starts."""
    hubs = app.engine.hubs
    return (len(hubs.served()) == HUBS + 1 and not any(p._sweep_all for p in hubs.promoters.values())
            and not any(r._pending for r in hubs.relays.values()))


async def test_idle_hubs_cost_redis_little_whatever_their_number(start_app, redis, redis_url, key_prefix, hub_name):
    apps = [await start_app(redis_url=redis_url, key_prefix=key_prefix, task_hub=hub_name, partitions=PARTITIONS)
            for _ in range(3)]
    for n in range(HUBS):
        await apps[0].engine.hubs.create(f"{hub_name}-{n}", False)

    async def settled() -> bool:
        return all(_settled(app) for app in apps)

    await eventually(settled, timeout=30, interval=0.1)
    before, started = await _calls(redis), time.monotonic()
    await asyncio.sleep(WINDOW_SECONDS)  # the measurement window (nothing waits on it)
    rate = (await _calls(redis) - before) / (time.monotonic() - started)
    assert rate < MAX_COMMANDS_PER_SECOND, f"{rate:.0f} Redis commands/s for {HUBS} idle hubs on 3 replicas"
