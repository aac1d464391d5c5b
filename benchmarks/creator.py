"""Create scheduled instances through the StartInstance path: ``Store.create_instance(new_instance(...))``.

Importable (:func:`create`) and runnable as its own process, so that creation
load does not share the measuring process with the promoters::

    python -m benchmarks.creator REDIS_URL HUB COUNT FIRST_DUE_MS WINDOW_MS [--input-bytes N] [--seed S] [--cluster]

Instance i (of COUNT) is due at FIRST_DUE_MS + i * WINDOW_MS / COUNT (epoch ms,
Redis clock); they are created in a shuffled order, in concurrent chunks. The
process prints one JSON line: how many were created and the Redis time (ms) of
the first and the last creation.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys

from google.protobuf import timestamp_pb2, wrappers_pb2

from scheduler.api import translate
from scheduler._proto import orchestrator_service_pb2 as pb
from scheduler.store import Store
from scheduler.store.connection import connect_fast

from .common import connect_redis, redis_time_ms, run_async

CHUNK = 200


def due_times(count: int, first_due_ms: int, window_ms: int) -> list[int]:
    return [first_due_ms + (i * window_ms) // max(count, 1) for i in range(count)]


def payload(size: int) -> str:
    body = "x" * max(size - 12, 0)
    return json.dumps({"data": body})[:size] if size >= 12 else "x" * size


async def create(store: Store, hub_name: str, dues: list[int], input_bytes: int = 100,
                 id_prefix: str = "i", seed: int = 1, chunk: int = CHUNK) -> dict:
    """Create one instance per due time (shuffled order, `chunk` at a time); returns timing in Redis ms."""
    hub = await store.ensure_hub(hub_name)
    text = payload(input_bytes)
    order = list(range(len(dues)))
    random.Random(seed).shuffle(order)

    def request(i: int) -> pb.CreateInstanceRequest:
        ts = timestamp_pb2.Timestamp(seconds=dues[i] // 1000, nanos=(dues[i] % 1000) * 1_000_000)
        return pb.CreateInstanceRequest(instanceId=f"{id_prefix}{i}", name="bench_scheduled",
                                        input=wrappers_pb2.StringValue(value=text), scheduledStartTimestamp=ts)

    start_ms = await redis_time_ms(store.redis)
    for n in range(0, len(order), chunk):
        await asyncio.gather(*(store.create_instance(hub, translate.new_instance(request(i), f"{id_prefix}{i}"))
                               for i in order[n:n + chunk]))
    end_ms = await redis_time_ms(store.redis)
    return {"created": len(order), "start_ms": start_ms, "end_ms": end_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.creator")
    parser.add_argument("redis_url")
    parser.add_argument("hub")
    parser.add_argument("count", type=int)
    parser.add_argument("first_due_ms", type=int)
    parser.add_argument("window_ms", type=int)
    parser.add_argument("--input-bytes", type=int, default=100)
    parser.add_argument("--id-prefix", default="i")
    parser.add_argument("--part", default="0/1", help="K/N: create only every N-th instance starting at K")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster", action="store_true", help="the URL names a node of a Redis Cluster")
    args = parser.parse_args(argv)
    k, n = (int(x) for x in args.part.split("/"))

    async def go() -> dict:
        redis = connect_redis(args.redis_url, args.cluster)
        try:
            # as a replica: the auto-pipelined connection on a standalone Redis, batches on a Cluster
            store = Store(redis, fast=connect_fast(args.redis_url, args.cluster))
            await store.load_scripts()
            dues = due_times(args.count, args.first_due_ms, args.window_ms)
            mine = dues[k::n]
            return await create(store, args.hub, mine, args.input_bytes, f"{args.id_prefix}{k}-", args.seed + k)
        finally:
            await store.aclose()

    print(json.dumps(run_async(go)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
