"""Redis memory per pending scheduled instance (part of the promotion benchmark).

``used_memory`` before/after creating N instances scheduled an hour ahead with a
100-byte input (through ``Store.create_instance``, as StartInstance does),
divided by N; plus ``MEMORY USAGE`` of one instance's keys and each instance's
share of its partition's sorted sets.
"""
from __future__ import annotations


from scheduler import testing
from scheduler.store import Store

from . import creator
from .common import PartResult, Row, log, median, redis_client, redis_time_ms, run_async

TARGET_BYTES = 1024
HUB = "memory"


async def _used_memory(redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def _measure(redis_url: str, count: int, input_bytes: int) -> dict:
    redis = redis_client(redis_url)
    try:
        store = Store(redis)
        await store.load_scripts()
        hub = await store.ensure_hub(HUB)
        far = await redis_time_ms(redis) + 3_600_000
        # Warm-up: make every partition's sets and stats exist, so only per-instance memory is measured.
        await creator.create(store, HUB, creator.due_times(200, far, 1000), input_bytes, id_prefix="warm-")
        before = await _used_memory(redis)
        await creator.create(store, HUB, creator.due_times(count, far, 60_000), input_bytes, id_prefix="m-")
        after = await _used_memory(redis)

        sample = [f"m-{i}" for i in range(0, count, max(count // 100, 1))]
        async with redis.pipeline(transaction=False) as pipe:
            for iid in sample:
                pk = hub.for_instance(iid)
                pipe.memory_usage(pk.instance(iid), samples=0)
                pipe.memory_usage(pk.inbox(iid), samples=0)
                pipe.exists(pk.history(iid))
            per_key = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for pk in hub.all_partitions():
                for key in (pk.due, pk.by_created, pk.ready, pk.by_status):
                    pipe.memory_usage(key, samples=0)
                    pipe.zcard(key)
                    pipe.object("encoding", key)
            zsets = await pipe.execute()
        instance_hash = median(per_key[0::3])
        inbox = median(per_key[1::3])
        total = count + 200
        share = {}
        names = ("due", "by_created", "ready", "by_status")
        width = 3 * len(names)
        for n, name in enumerate(names):
            used = [zsets[width * p + 3 * n] or 0 for p in range(hub.partitions)]
            members = sum(zsets[width * p + 3 * n + 1] for p in range(hub.partitions))
            share[name] = sum(used) / total if members else 0.0
            share[name + "_encoding"] = sorted({(zsets[width * p + 3 * n + 2] or b"none").decode()
                                                for p in range(hub.partitions)})
        per_instance = (after - before) / count
        return {"count": count, "input_bytes": input_bytes, "used_memory_before": before,
                "used_memory_after": after, "bytes_per_instance": per_instance,
                "memory_usage_instance_hash": instance_hash, "memory_usage_inbox_list": inbox,
                "history_key_exists": any(per_key[2::3]),
                "due_zset_share": share["due"], "by_created_zset_share": share["by_created"],
                "ready_zset_share": share["ready"], "status_index_share": share["by_status"],
                "zset_encodings": {k: v for k, v in share.items()
                                                                       if k.endswith("_encoding")},
                "unaccounted": (per_instance - instance_hash - inbox - share["due"] - share["by_created"]
                                - share["by_status"])}
    finally:
        await redis.aclose()


def run(quick: bool = False, count: int = 10_000, input_bytes: int = 100) -> PartResult:
    result = PartResult("memory")
    log(f"memory: {count:,} pending scheduled instances, {input_bytes}-byte input")
    with testing.redis_server() as url:
        m = run_async(lambda: _measure(url, count, input_bytes))
    result.details = m
    result.rows += [
        Row("memory", "used_memory per scheduled instance", m["bytes_per_instance"],
            target=f"<= {TARGET_BYTES} B", ok=m["bytes_per_instance"] <= TARGET_BYTES, unit="B"),
        Row("memory", "  MEMORY USAGE instance hash", m["memory_usage_instance_hash"], unit="B"),
        Row("memory", "  MEMORY USAGE inbox list", m["memory_usage_inbox_list"], unit="B"),
        Row("memory", "  due zset share", m["due_zset_share"], unit="B"),
        Row("memory", "  by-created zset share (schema-1 hubs only)", m["by_created_zset_share"], unit="B"),
        Row("memory", "  status index (by-status) share", m["status_index_share"], unit="B"),
        Row("memory", "  rest (key table, allocator)", m["unaccounted"], unit="B"),
    ]
    result.notes.append(f"{count:,} instances scheduled 1 h ahead, {input_bytes}-byte input, 16 partitions; "
                        f"zset encodings {m['zset_encodings']}; history list created: {m['history_key_exists']}")
    return result
