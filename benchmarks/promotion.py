"""Precision and scale of the scheduler worker (Store + Promoter + Wakeups), in-process, on a fresh redis-server.

Lag of an entry = ``Promotion.now_ms`` (Redis time of the promote call) minus
its due time (ms, Redis clock); an entry promoted before its due time (lag < 0)
counts as early. The promoters run here exactly as in a replica (the engine's
``Wakeups`` route "due" wake-ups to ``Promoter.due_at``), each set on its own connections.

* precision: 1,000 instances due uniformly over 3 s, the first 2 s ahead, one
  promoter; instances are created here, before the first due time.
* scale: 100,000 instances (10,000 with --quick) due within 10 s, two promoters
  (two replicas); instances are created by a separate process first, with a lead
  time from a calibration run; checks that every entry was promoted exactly once.
* burst: 20,000 instances (5,000 with --quick) all due at the same ms, two
  promoters: how fast a backlog drains (the promoters' capacity).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter


from scheduler import testing
from scheduler.engine.promoter import Promoter
from scheduler.engine.waiters import Waiters
from scheduler.engine.wakeups import Wakeups
from scheduler.store import Promotion, Store

from . import creator
from .common import (PartResult, Row, connect_redis, log, percentile, redis_client, redis_cpu_seconds, redis_time_ms, run_async,
                     self_cpu_seconds)

PRECISION_P99_MS = 20
SCALE_P99_MS = 100
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lags:
    """Collects what every promoter reports."""

    def __init__(self) -> None:
        self.lags: list[int] = []
        self.by_promoter: Counter[int] = Counter()
        self.per_second: Counter[int] = Counter()
        self.calls = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.done = asyncio.Event()
        self.expected = 0

    def callback(self, promoter_no: int):
        def on_promoted(p: Promotion) -> None:
            self.calls += 1
            self.lags.extend(p.now_ms - due for due in p.promoted_due_ms)
            self.by_promoter[promoter_no] += len(p.promoted_due_ms)
            self.per_second[p.now_ms // 1000] += len(p.promoted_due_ms)
            self.first_ms = p.now_ms if self.first_ms is None else min(self.first_ms, p.now_ms)
            self.last_ms = p.now_ms if self.last_ms is None else max(self.last_ms, p.now_ms)
            if len(self.lags) >= self.expected:
                self.done.set()
        return on_promoted

    def stats(self) -> dict:
        return {"promoted": len(self.lags), "promote_calls_with_work": self.calls,
                "lag_p50_ms": percentile(self.lags, 50), "lag_p99_ms": percentile(self.lags, 99),
                "lag_max_ms": max(self.lags, default=None), "early": sum(1 for x in self.lags if x < 0),
                "by_promoter": dict(sorted(self.by_promoter.items()))}


class _Route:
    """Stands in for the engine's hubs and dispatcher: "due" wake-ups of the hub go to its promoter."""

    def __init__(self, hub: str, promoter: Promoter) -> None:
        self.hub, self.promoter = hub, promoter

    def due_at(self, name: str, ms: int, partition: int | None) -> None:
        if name == self.hub:
            self.promoter.due_at(ms, partition)

    def __getattr__(self, name):  # every other wake-up: nothing to do here
        return lambda *args: None


class Replicas:
    """N promoter sets (Redis client, Store, Wakeups, Promoter), as N replicas would run them."""

    def __init__(self, redis_url: str, hub: str, count: int, lags: Lags, cluster: bool = False) -> None:
        self.redis_url, self.hub, self.count, self.lags, self.cluster = redis_url, hub, count, lags, cluster
        self.parts: list[tuple] = []

    async def __aenter__(self) -> "Replicas":
        for n in range(self.count):
            redis = connect_redis(self.redis_url, self.cluster)
            store = Store(redis)
            await store.load_scripts()
            hub = await store.ensure_hub(self.hub)
            promoter = Promoter(store, hub, on_promoted=self.lags.callback(n))
            route = _Route(self.hub, promoter)
            wakeups = Wakeups(store, route, route, Waiters())
            wakeups.start()
            await asyncio.wait_for(wakeups.connected.wait(), 10)
            promoter.start()
            self.parts.append((redis, wakeups, promoter))
        return self

    async def __aexit__(self, *exc) -> None:
        for redis, wakeups, promoter in self.parts:
            await promoter.stop()
            await wakeups.stop()
            await redis.aclose()


async def _queue_sizes(redis, hub_name: str) -> tuple[int, int]:
    hub = await Store(redis).ensure_hub(hub_name)
    async with redis.pipeline(transaction=False) as pipe:
        for pk in hub.all_partitions():
            pipe.zcard(pk.ready)
            pipe.zcard(pk.due)
        counts = await pipe.execute()
    return sum(counts[0::2]), sum(counts[1::2])


async def _watch_window(redis, lags: Lags, first_due: int, timeout_s: float) -> dict:
    """From the first due time until everything is promoted: CPU of the promoters (this process) and of Redis."""
    await asyncio.sleep(max(first_due - await redis_time_ms(redis), 0) / 1000)
    t0, cpu0, rcpu0 = time.perf_counter(), self_cpu_seconds(), await redis_cpu_seconds(redis)
    try:
        await asyncio.wait_for(lags.done.wait(), max(timeout_s, 1))
    except asyncio.TimeoutError:
        log("  not everything was promoted in time")
    elapsed, cpu, rcpu = (time.perf_counter() - t0, self_cpu_seconds() - cpu0,
                          await redis_cpu_seconds(redis) - rcpu0)
    n = max(len(lags.lags), 1)
    return {"promoter_cpu_ms_per_1000": cpu * 1e6 / n, "redis_cpu_ms_per_1000": rcpu * 1e6 / n,
            "promoters_busy_cores": cpu / elapsed, "redis_busy_cores": rcpu / elapsed}


async def _precision(redis_url: str, count: int = 1000, lead_ms: int = 2000, window_ms: int = 3000) -> dict:
    lags = Lags()
    lags.expected = count
    redis = redis_client(redis_url)
    try:
        async with Replicas(redis_url, "precision", 1, lags):
            store = Store(redis)
            await store.load_scripts()
            first_due = await redis_time_ms(redis) + lead_ms
            made = await creator.create(store, "precision", creator.due_times(count, first_due, window_ms))
            cpu = await _watch_window(redis, lags, first_due, window_ms / 1000 + 10)
        out = lags.stats()
        out.update(cpu, count=count, lead_ms=lead_ms, window_ms=window_ms, promoters=1,
                   creation_ms=made["end_ms"] - made["start_ms"], creation_margin_ms=first_due - made["end_ms"])
        return out
    finally:
        await redis.aclose()


async def _run_creator(redis_url: str, hub: str, count: int, first_due_ms: int, window_ms: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.creator", redis_url, hub, str(count), str(first_due_ms), str(window_ms),
        cwd=REPO, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"creator process failed with code {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


async def _scale(redis_url: str, count: int, window_ms: int = 10_000, promoters: int = 2,
                 calibration: int = 5000, rate: float | None = None) -> dict:
    redis = redis_client(redis_url)
    lags = Lags()
    lags.expected = count
    try:
        async with Replicas(redis_url, "scale", promoters, lags):
            # Calibrate the creation rate (same path, a separate hub far in the future).
            if rate is None:
                now = await redis_time_ms(redis)
                calib = await _run_creator(redis_url, "calibration", calibration, now + 3_600_000, 1000)
                rate = calib["created"] / max(calib["end_ms"] - calib["start_ms"], 1) * 1000
            lead_ms = int(max(5000, 1.5 * count / rate * 1000 + 3000))
            log(f"  creation rate {rate:,.0f}/s: lead time {lead_ms / 1000:.1f}s "
                f"for {count:,} instances")
            first_due = await redis_time_ms(redis) + lead_ms
            made = await _run_creator(redis_url, "scale", count, first_due, window_ms)
            margin = first_due - made["end_ms"]
            log(f"  created {made['created']:,} in {(made['end_ms'] - made['start_ms']) / 1000:.1f}s, "
                f"{margin / 1000:.1f}s before the first due time")
            cpu = await _watch_window(redis, lags, first_due, window_ms / 1000 + 30)
            await asyncio.sleep(0.5)  # a straggling duplicate would show up here
        ready, due = await _queue_sizes(redis, "scale")
        out = lags.stats()
        span_ms = max((lags.last_ms or first_due) - first_due, window_ms, 1)
        out.update(cpu, count=count, created=made["created"], window_ms=window_ms, promoters=promoters, lead_ms=lead_ms,
                   calibration_rate_per_s=rate, creation_ms=made["end_ms"] - made["start_ms"],
                   creation_margin_ms=margin, ready_after=ready, due_after=due,
                   exactly_once=len(lags.lags) == made["created"] == ready and due == 0,
                   promotions_per_s=len(lags.lags) / span_ms * 1000,
                   peak_promotions_per_s=max(lags.per_second.values(), default=0))
        return out
    finally:
        await redis.aclose()


def run(quick: bool = False, scale_count: int | None = None, burst_count: int | None = None) -> PartResult:
    result = PartResult("promotion")
    with testing.redis_server() as url:
        log("promotion: precision (1,000 instances over 3 s, 1 promoter)")
        p = run_async(lambda: _precision(url))
    count = scale_count or (10_000 if quick else 100_000)
    with testing.redis_server() as url:
        log(f"promotion: scale ({count:,} instances over 10 s, 2 promoters)")
        s = run_async(lambda: _scale(url, count, calibration=2000 if quick else 5000))
    burst = burst_count or (5_000 if quick else 20_000)
    with testing.redis_server() as url:
        log(f"promotion: burst ({burst:,} instances due at the same ms, 2 promoters)")
        b = run_async(lambda: _scale(url, burst, window_ms=0, rate=s["calibration_rate_per_s"]))
    result.details.update(precision=p, scale=s, burst=b)
    ok_p99 = lambda d, limit: d["lag_p99_ms"] is not None and d["lag_p99_ms"] <= limit  # noqa: E731
    result.rows += [
        Row("promotion", "precision: early promotions", p["early"], target="0", ok=p["early"] == 0),
        Row("promotion", "precision: lag p50 / max", p["lag_p50_ms"], unit="ms", target=f"max {p['lag_max_ms']} ms"),
        Row("promotion", "precision: lag p99", p["lag_p99_ms"], target=f"<= {PRECISION_P99_MS} ms",
            ok=ok_p99(p, PRECISION_P99_MS), unit="ms"),
        Row("promotion", "precision: promoted", p["promoted"], target=f"{p['count']}", ok=p["promoted"] == p["count"]),
        Row("promotion", "precision: CPU per 1000 (promoter)", p["promoter_cpu_ms_per_1000"], unit="ms",
            target=f"{p['promoters_busy_cores']:.2f} cores busy"),
        Row("promotion", f"scale: promoted ({s['promoters']} promoters)", s["promoted"],
            target=f"{s['created']} exactly once", ok=s["exactly_once"]),
        Row("promotion", "scale: promotions/s over window", s["promotions_per_s"], unit="/s"),
        Row("promotion", "scale: lag p50 / max", s["lag_p50_ms"], unit="ms", target=f"max {s['lag_max_ms']} ms"),
        Row("promotion", "scale: lag p99", s["lag_p99_ms"], target=f"<= {SCALE_P99_MS} ms",
            ok=ok_p99(s, SCALE_P99_MS), unit="ms"),
        Row("promotion", "scale: early promotions", s["early"], target="0", ok=s["early"] == 0),
        Row("promotion", "scale: CPU per 1000 promoted (promoters)", s["promoter_cpu_ms_per_1000"], unit="ms",
            target=f"{s['promoters_busy_cores']:.2f} cores busy"),
        Row("promotion", "scale: CPU per 1000 promoted (redis)", s["redis_cpu_ms_per_1000"], unit="ms",
            target=f"{s['redis_busy_cores']:.2f} cores busy"),
        Row("promotion", f"burst: promoted ({b['promoters']} promoters)", b["promoted"],
            target=f"{b['created']} exactly once", ok=b["exactly_once"]),
        Row("promotion", "burst: drain rate (capacity)", b["promotions_per_s"], unit="/s"),
        Row("promotion", "burst: lag p99 (drain time)", b["lag_p99_ms"], unit="ms"),
    ]
    for name, d in (("precision", p), ("scale", s), ("burst", b)):
        margin = d["creation_margin_ms"]
        if margin < 0:
            result.notes.append(f"{name}: creation overlapped the window by {-margin / 1000:.1f}s "
                                "(measurement disturbed)")
        else:
            result.notes.append(f"{name}: creation ({d['count']:,}, {d['creation_ms'] / 1000:.1f}s) finished "
                                f"{margin / 1000:.1f}s before the first due time (lead {d['lead_ms'] / 1000:.1f}s)")
    result.notes.append(f"scale: promoted per promoter {s['by_promoter']}; after the run ready={s['ready_after']:,} "
                        f"due={s['due_after']:,}; creation rate calibrated at {s['calibration_rate_per_s']:,.0f}/s; "
                        f"peak {s['peak_promotions_per_s']:,}/s in one second")
    return result
