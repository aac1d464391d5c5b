"""Key names: partitioning, hash tags and hub ownership."""
from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from scheduler.store import keys
from scheduler.store.keys import HubKeys, partition_of, queue_of


def hash_tag(key: str) -> str:
    """The part of the key Redis Cluster hashes (the first non-empty {...})."""
    m = re.search(r"\{([^}]+)\}", key)
    assert m, f"{key} has no hash tag"
    return m.group(1)


@pytest.mark.parametrize("partitions", [1, 4, 16, 1024])
def test_partition_of_is_in_range_and_stable(partitions):
    ids = [f"id-{i}" for i in range(500)] + ["", "ü-ñ", "x" * 256]
    first = [partition_of(i, partitions) for i in ids]
    assert all(0 <= p < partitions for p in first)
    assert first == [partition_of(i, partitions) for i in ids]


def test_partition_of_known_values_never_change():
    # CRC-32 of the UTF-8 id: the same in every process and Python version.
    assert partition_of("abc", 16) == 0x352441C2 % 16
    assert partition_of("instance-1", 4) == 2482004369 % 4 == 1
    assert partition_of("", 7) == 0


def test_partition_of_spreads_ids_over_all_partitions():
    seen = {partition_of(f"order-{i}", 16) for i in range(1000)}
    assert seen == set(range(16))


def test_every_key_of_one_instance_shares_one_hash_tag():
    hub = HubKeys("dt", "orders", 16)
    for iid in ("a", "b:c", "{weird}", "x}y", "id with spaces"):
        pk = hub.for_instance(iid)
        names = [pk.instance(iid), pk.inbox(iid), pk.history(iid), pk.due, pk.ready, pk.by_created, pk.stats]
        assert {hash_tag(k) for k in names} == {f"orders:{partition_of(iid, 16)}"}
        assert len({key_slot(k.encode()) for k in names}) == 1


def test_partition_keys_layout():
    pk = HubKeys("dt", "h", 4).partition(3)
    assert pk.due == "dt:{h:3}:due"
    assert pk.ready == "dt:{h:3}:ready"
    assert pk.by_created == "dt:{h:3}:by-created"
    assert pk.stats == "dt:{h:3}:stats"
    assert pk.instance("i") == "dt:{h:3}:inst:i"
    assert pk.inbox("i") == "dt:{h:3}:inbox:i"
    assert pk.history("i") == "dt:{h:3}:hist:i"
    assert HubKeys("dt", "h", 4).meta == keys.meta_key("dt", "h") == "dt:{h}:meta"
    assert keys.hubs_key("dt") == "dt:hubs"
    assert keys.events_channel("dt") == "dt:events"


def test_all_partitions_lists_each_partition_once():
    hub = HubKeys("p", "h", 4)
    assert [pk.due for pk in hub.all_partitions()] == [f"p:{{h:{i}}}:due" for i in range(4)]


def test_scan_patterns_cover_meta_and_partition_keys():
    hub = HubKeys("dt", "h", 4)
    assert hub.scan_patterns() == ["dt:{h}:*", "dt:{h:*}:*"]


@pytest.mark.parametrize("key", ["dt:{hubA}:meta", "dt:{hubA:0}:due", "dt:{hubA:15}:inst:x",
                                 "dt:{hubA:3}:inbox:a:b}:c", "dt:{hubA}:anything"])
def test_owns_accepts_the_hubs_own_keys(key):
    assert HubKeys("dt", "hubA", 16).owns(key)


@pytest.mark.parametrize("key", [
    "dt:{hubA-2}:meta", "dt:{hubA-2:0}:due", "dt:{hubAB:1}:inst:x", "dt:{hubA.x}:meta",  # look-alike hubs
    "other:{hubA}:meta", "other:{hubA:0}:due", "dtx:{hubA}:meta", "d:{hubA}:meta",  # other prefixes
    "dt:hubs", "dt:events", "foreign", "dt:{hubA", "dt:{hubA:}:due", "dt:{hubA:x}:due",
    "dt:{hubA:1x}:due", "dt:{hubA:1}", "dt:{hub}:meta", "xdt:{hubA}:meta",  # malformed or foreign
])
def test_owns_rejects_everything_else(key):
    assert not HubKeys("dt", "hubA", 16).owns(key)


def test_every_key_built_for_a_hub_is_owned_by_it():
    hub = HubKeys("pre", "h-1", 4)
    built = [hub.meta]
    for pk in hub.all_partitions():
        built += [pk.due, pk.ready, pk.by_created, pk.stats, pk.instance("i"), pk.inbox("i"), pk.history("i")]
    assert all(hub.owns(k) for k in built)
    assert not any(HubKeys("pre", "h", 4).owns(k) for k in built)
    assert not any(HubKeys("pre", "h-1-", 4).owns(k) for k in built)


def test_queue_of_names_the_queue_and_partition_of_a_wake_up():
    hub = HubKeys("dt", "hub:7", 16)
    assert queue_of(hub.partition(11).ready) == ("ready", 11)
    assert queue_of(hub.partition(0).activities) == ("activities", 0)
    assert queue_of(hub.partition(3).due) == ("due", 3)
    assert queue_of(hub.partition(3).outbox) == ("outbox", 3)
    for other in ("-", "", hub.partition(3).stats, hub.meta, "dt:{hub:x}:ready"):
        assert queue_of(other) is None
