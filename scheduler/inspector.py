"""Operator view: per task hub, instances by status, the due set and the ready queue."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from .config import Config
from .errors import StoreError, StoreUnavailable
from .store import HubStats, Store
from .store.connection import Sentinels, connect


def _store(cfg: Config) -> Store:
    """A Store on the configured Redis (through the Sentinels when given), for the tools."""
    return Store(connect(cfg.redis_url, cfg.redis_cluster, sentinels=Sentinels.of(cfg)), cfg.key_prefix,
                 cfg.partitions)


def render_dataset(info: dict[str, str], lost: dict[str, int], now_ms: int) -> str:
    """The dataset identity and the replicas that find it lost."""
    if not info.get("id"):
        line = "dataset identity: MISSING (emptied or replaced Redis, or no replica has started on it yet)"
    else:
        adopted = f", adopted {_when(int(info['adopted_ms']), now_ms)}" if info.get("adopted_ms") else ""
        line = f"dataset identity: {info['id']}{adopted}"
    if lost:
        names = ", ".join(f"{name} (since {_when(ms, now_ms)})" for name, ms in sorted(lost.items()))
        line += (f"\n  LOST according to replicas: {names}; they refuse writes until `dt-scheduler dataset adopt`")
    return line


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    delta = (ms - now_ms) / 1000
    return f"{at} (in {delta:.3f}s)" if delta >= 0 else f"{at} ({-delta:.3f}s ago)"


def render(stats: HubStats) -> str:
    statuses = ", ".join(f"{status}={count}" for status, count in stats.statuses.items()) or "none"
    oldest = "-" if stats.oldest_ready_ms is None else f"{(stats.now_ms - stats.oldest_ready_ms) / 1000:.3f}s"
    return "\n".join([
        f"task hub {stats.hub!r} ({stats.partitions} partitions)",
        f"  instances by status: {statuses}",
        f"  due set: {stats.due} entries, next due {_when(stats.next_due_ms, stats.now_ms)}",
        f"  ready queue: {stats.ready} entries, oldest waiting {oldest}",
    ])


async def inspect_hubs(cfg: Config, all_hubs: bool = False, watch: float | None = None) -> int:
    if cfg.redis_url is None:
        print("inspect needs --redis-url (the embedded store lives inside the serving process)")
        return 2
    store = _store(cfg)
    try:
        while True:
            info, lost = await store.dataset_info()
            print(render_dataset(info, lost, await store.server_time_ms()), flush=True)
            names = await store.known_hubs() if all_hubs else [cfg.task_hub]
            for name in names:
                hub = await store.find_hub(name)  # looking never creates a hub
                print(f"task hub {name!r}: no such hub" if hub is None else render(await store.hub_stats(hub)),
                      flush=True)
            if watch is None:
                return 0
            await asyncio.sleep(watch)
            print()
    except StoreUnavailable as exc:
        print(f"inspect: {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    finally:
        await store.aclose()


async def configure_hub(cfg: Config, retention_seconds: float | None) -> int:
    """Set (or with None, clear) the retention of the hub ``cfg.task_hub``; the hub must exist."""
    if cfg.redis_url is None:
        print("configure-hub needs --redis-url (the embedded store lives inside the serving process)")
        return 2
    if retention_seconds is not None and retention_seconds < 0:
        print("configure-hub: --hub-retention-seconds must not be negative (0 keeps finished instances)")
        return 2
    store = _store(cfg)
    try:
        hub = await store.find_hub(cfg.task_hub)
        if hub is None:
            print(f"configure-hub: task hub {cfg.task_hub!r} does not exist")
            return 1
        await store.set_retention_seconds(hub, retention_seconds)
        what = "follows --retention-seconds" if retention_seconds is None else \
            ("keeps finished instances" if retention_seconds == 0 else
             f"purges finished instances {retention_seconds:g} s after they ended")
        print(f"task hub {cfg.task_hub!r} {what}")
        return 0
    except StoreError as exc:
        print(f"configure-hub: {exc}")
        return 1
    finally:
        await store.aclose()


async def adopt_dataset(cfg: Config) -> int:
    """Give Redis a new dataset identity, marked adopted: every replica takes it and writes again."""
    if cfg.redis_url is None:
        print("dataset needs --redis-url or --redis-sentinels (the embedded store lives inside the serving process)")
        return 2
    store = _store(cfg)
    try:
        fresh = await store.adopt_dataset()
        print(f"dataset identity {fresh} adopted: the replicas take it within a second or two and write again")
        return 0
    except StoreError as exc:
        print(f"dataset adopt: {exc}")
        return 1
    finally:
        await store.aclose()
