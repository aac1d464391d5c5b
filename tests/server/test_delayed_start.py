"""A delayed start is promoted to the ready set at its time by the App's promoter, never before."""
from __future__ import annotations

import time

from google.protobuf import timestamp_pb2

from scheduler import protocol
from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import eventually


async def observe(redis, pk, iid: str) -> tuple[bool, bool, int]:
    """(in ready, in due, Redis time in ms) read atomically in one MULTI/EXEC."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zscore(pk.ready, iid)
        pipe.zscore(pk.due, iid)
        pipe.time()
        ready, due, (seconds, micros) = await pipe.execute()
    return ready is not None, due is not None, seconds * 1000 + micros // 1000


async def test_delayed_start_is_promoted_at_its_time_and_not_before(stub, app, redis, hub_name):
    at = timestamp_pb2.Timestamp()
    at.FromNanoseconds(time.time_ns() + 300_000_000 + 1)  # 300 ms ahead, not on a ms boundary
    due = protocol.due_ms(at)
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="delayed", name="O", scheduledStartTimestamp=at))
    pk = (await app.store.ensure_hub(hub_name)).for_instance("delayed")
    seen_waiting = 0
    promoted_at = None

    async def promoted() -> bool:
        nonlocal seen_waiting, promoted_at
        ready, waiting, now = await observe(redis, pk, "delayed")
        assert ready != waiting, "in exactly one of ready and due"
        if ready:
            assert now >= due, f"in the ready set {due - now} ms before its due time"
            promoted_at = now
            return True
        seen_waiting += 1
        return False

    await eventually(promoted, timeout=5)
    assert seen_waiting > 0
    assert promoted_at - due < 300, f"promoted {promoted_at - due} ms late"
    assert await redis.zscore(pk.ready, "delayed") == due
    stats = await app.store.hub_stats(await app.store.ensure_hub(hub_name))
    assert (stats.due, stats.ready, stats.statuses) == (0, 1, {"PENDING": 1})


async def test_several_delayed_starts_in_every_partition(stub, app, redis, hub_name):
    hub = await app.store.ensure_hub(hub_name)
    base = time.time_ns() + 200_000_000
    ids = [f"d-{i}" for i in range(12)]
    for i, iid in enumerate(ids):
        at = timestamp_pb2.Timestamp()
        at.FromNanoseconds(base + i * 20_000_000)  # 20 ms apart
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="O", scheduledStartTimestamp=at))
    assert len({hub.for_instance(iid).base for iid in ids}) == hub.partitions

    async def all_ready() -> bool:
        async with redis.pipeline(transaction=True) as pipe:  # one atomic look: time and ready scores
            pipe.time()
            for iid in ids:
                pipe.zscore(hub.for_instance(iid).ready, iid)
            (seconds, micros), *scores = await pipe.execute()
        now = seconds * 1000 + micros // 1000
        ready = [score for score in scores if score is not None]
        assert all(score <= now for score in ready), "promoted before its due time"
        return len(ready) == len(ids)

    await eventually(all_ready, timeout=5)
    assert (await app.store.hub_stats(hub)).due == 0
