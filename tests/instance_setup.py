"""Instance set-ups shared by the store and server query tests (pytest puts tests/ on sys.path)."""
from __future__ import annotations

from scheduler.store import keys


async def finish(redis, hub: keys.HubKeys, iid: str, status: str = "COMPLETED", completed_ms: int = 1_000) -> None:
    """Make an instance terminal as a worker will (status, completed time, stats, status index, out of the
    ready set)."""
    pk = hub.for_instance(iid)
    old = (await redis.hget(pk.instance(iid), "status")).decode()
    created = int(await redis.hget(pk.instance(iid), "created_ms"))
    await redis.hset(pk.instance(iid), mapping={"status": status, "completed_ms": completed_ms})
    await redis.zrem(pk.by_status, status_member(old, created, iid))
    await redis.zadd(pk.by_status, {status_member(status, created, iid): 0})
    await redis.hincrby(pk.stats, old, -1)
    await redis.hincrby(pk.stats, status, 1)
    await redis.zrem(pk.ready, iid)


async def set_created(redis, hub: keys.HubKeys, iid: str, ms: int) -> None:
    pk = hub.for_instance(iid)
    status = (await redis.hget(pk.instance(iid), "status")).decode()
    old = int(await redis.hget(pk.instance(iid), "created_ms"))
    await redis.zadd(pk.by_created, {iid: ms}, xx=True)  # a hub of schema 1 has it
    await redis.hset(pk.instance(iid), "created_ms", ms)
    for indexed in (status, "*"):  # a hub of schema 1 or 2 has the "*" member
        if await redis.zrem(pk.by_status, status_member(indexed, old, iid)):
            await redis.zadd(pk.by_status, {status_member(indexed, ms, iid): 0})


def status_member(status: str, created_ms: int, iid: str) -> str:
    """An instance's member in its partition's status index (as status_member in lua/prelude.lua)."""
    return f"{status}|{created_ms:016d}|{iid}"


async def index_order(redis, hub: keys.HubKeys) -> list[str]:
    """Every indexed id in (created_ms, id) order, read straight from the status indexes."""
    entries = []
    for pk in hub.all_partitions():
        for member in await redis.zrange(pk.by_status, 0, -1):
            status, created, iid = member.decode().split("|", 2)
            if status != "*":
                entries.append((int(created), iid))
    return [iid for _, iid in sorted(entries)]
