"""One query page does bounded work whatever the data: 20,000 instances that do not match, on a real
redis-server, counted with INFO commandstats (the store alone runs: nothing else sends commands)."""
from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from scheduler.store import InstanceFilter, Store
from scheduler.store.pipelining import PipelinedConnection
from store_helpers import new

INSTANCES = 20_000
MAX_COMMANDS = 2_000  # per page


async def commands_sent(redis) -> int:
    stats = await redis.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


@pytest.fixture
async def crowded(redis_url, key_prefix, hub_name):
    """A hub of 16 partitions with 20,000 instances "i-<n>", all TERMINATED (so in every index a list reads)."""
    url = redis_url  # the scripts go pipelined, on one connection, as the App sends them
    store = Store(aioredis.Redis.from_url(url), key_prefix, default_partitions=16, fast=PipelinedConnection(url))
    hub = await store.ensure_hub(hub_name)
    ids = [f"i-{n:05d}" for n in range(INSTANCES)]
    for i in range(0, INSTANCES, 50):  # many scripts in flight at once
        await asyncio.gather(*(store.create_instance(hub, new(iid)) for iid in ids[i:i + 50]))
    for i in range(0, INSTANCES, 50):
        await asyncio.gather(*(store.terminate_instance(hub, iid, b"terminated", None) for iid in ids[i:i + 50]))
    counter = aioredis.Redis.from_url(url)
    yield store, hub, counter
    await counter.aclose()
    await store.aclose()


NOT_MATCHING = {
    "status": InstanceFilter(statuses=frozenset({"RUNNING"})),
    "prefix": InstanceFilter(id_prefix="none-"),
    "status-and-prefix": InstanceFilter(statuses=frozenset({"TERMINATED"}), id_prefix="none-"),
    "list-completed-later": InstanceFilter(terminal_only=True, completed_from_ms=2 ** 52),
}


async def test_a_page_over_20000_instances_that_do_not_match_is_bounded(crowded):
    store, hub, counter = crowded
    for name, flt in NOT_MATCHING.items():
        after, pages = None, 0
        while True:
            before = await commands_sent(counter)
            found, after = await store.query_instances(hub, flt, 1000, after, start_events=False)
            spent = await commands_sent(counter) - before
            print(f"{name}: page {pages}: {spent} commands")
            assert found == []
            assert spent <= MAX_COMMANDS, f"{name}: one page sent {spent} Redis commands"
            pages += 1
            if after is None:
                break
        assert pages <= INSTANCES // 300, f"{name}: {pages} pages"  # each page moves on by hundreds of entries
