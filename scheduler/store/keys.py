"""Every Redis key name of the store, built in one place.

All keys of one instance, and the queues of its partition, share the hash tag
``{H:p}`` so that each script touches one Redis Cluster slot. Scripts receive
their keys as KEYS and never build or scan key names themselves.

=====================================  ======  ===============================================
key                                    type    holds
=====================================  ======  ===============================================
``<prefix>:hubs``                      set     names of the task hubs created on this Redis
``<prefix>:generations``               string  counter that numbers task hub generations (see store.py)
``<prefix>:events``                    pubsub  wake-ups, "<hub> <kind> <arg>" (see notify.py)
``<prefix>:{H}:meta``                  hash    partitions, schema version, created time (ms), generation, retention;
                                              while the hub is being deleted: deleting (tombstone generation), deleting_ms
``<prefix>:{H}:turn:<job>``            string  which replica runs a housekeeping job of the hub now (expires)
``<prefix>:{H:p}:generation``          string  the generation that owns the partition (writes of an older one are refused)
``<prefix>:{H:p}:inst:<id>``           hash    one instance's scalar fields (see api/translate.py)
``<prefix>:{H:p}:inbox:<id>``          list    new events (serialized HistoryEvent) not yet given to a worker
``<prefix>:{H:p}:hist:<id>``           list    the instance's history, one serialized HistoryEvent each
``<prefix>:{H:p}:timers:<id>``         zset    the instance's pending TimerFired events; score = fire time (ms)
``<prefix>:{H:p}:seen:<id>``           zset    ids of the messages the instance took (de-duplication, see
                                              protocol.DEDUP_WINDOW_MS); score = ms
``<prefix>:{H:p}:outbox``              list    messages from this partition's instances to other instances
``<prefix>:{H:p}:relay``               string  the relay that drains the partition's outbox now (its owner; expires)
``<prefix>:{H:p}:due``                 zset    instance ids that become ready at a time; score = due epoch ms
``<prefix>:{H:p}:ready``               zset    instance ids with work to dispatch; score = ready since (ms)
``<prefix>:{H:p}:leases``              zset    claimed work items (lease_member: "o|<id>", "a|<item>"); score = lease expiry (ms)
``<prefix>:{H:p}:by-created``          zset    instance ids by creation time (ms); written in hubs of schema 1 only
``<prefix>:{H:p}:by-completed``        zset    ids of ended instances by completion time (ms): what retention purges
``<prefix>:{H:p}:stats``               hash    instance count per status name
``<prefix>:{H:p}:by-status``           zset    every instance by status, all at score 0: "<status>|<created ms, 16
                                              digits>|<id>" (lexical order: queries); in hubs of schema 1
                                              and 2 also "*|<created ms>|<id>"
``<prefix>:{H:p}:activities``          zset    activity work items ready to hand out; score = queued since (ms)
``<prefix>:{H:p}:act-payloads``        hash    activity work item -> serialized ActivityRequest, until completed
``<prefix>:{H:p}:act-tokens``          hash    activity work item -> claim token, while claimed
``<prefix>:{H:p}:ent:<id>``            hash    one entity: state, modified_ms, locked_by/lock_section, size; while a
                                              batch is out: lease, claimed_n (see entities.py)
``<prefix>:{H:p}:ent-ops:<id>``        list    the entity's messages that may run now, in order (protocol.EntityMessage)
``<prefix>:{H:p}:ent-held:<id>``       list    messages held back while another orchestration has the entity locked
``<prefix>:{H:p}:ent-later:<id>``      zset    delayed signals; score = due time (ms)
``<prefix>:{H:p}:ent-seen:<id>``       zset    ids of the messages the entity took (de-duplication, as seen:); score = ms
``<prefix>:{H:p}:entities``            zset    entity ids with operations to dispatch; score = ready since (ms)
``<prefix>:{H:p}:ent-index``           zset    every entity id of the partition, score 0 (lexical order: queries)
=====================================  ======  ===============================================
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from ..protocol import ACTIVITY, ENTITY, ORCHESTRATION

# The versions of a hub's key layout (its meta "schema", fixed when the hub is made):
# 1: queries walk the by-created zsets (the status index is kept but not read);
# 2: queries read the status index, whose "*" members list every instance (by-created kept, not read);
# 3: no by-created and no "*" members: a query without a status filter reads every status's range.
SCHEMA_VERSION = 3
STATUS_INDEX_SCHEMA = 2  # the first schema whose hubs index every instance by status


# The partition queues that work waits in, and the due set; named by wake-ups (see queue_of).
WORK_QUEUES = {ORCHESTRATION: "ready", ACTIVITY: "activities", ENTITY: "entities"}

def partition_of(instance_id: str, partitions: int) -> int:
    """Stable partition of an instance id (CRC-32, the same on every replica and Python version)."""
    return zlib.crc32(instance_id.encode("utf-8")) % partitions


@dataclass(frozen=True)
class PartitionKeys:
    """Keys of one partition of one hub; all share the hash tag ``{hub:p}``."""

    base: str  # "<prefix>:{<hub>:<p>}:"

    @property
    def generation(self) -> str:
        return self.base + "generation"

    @property
    def by_completed(self) -> str:
        return self.base + "by-completed"

    def queue(self, name: str) -> str:
        """The partition queue ``name`` (one of WORK_QUEUES' values, or "due")."""
        return self.base + name

    @property
    def due(self) -> str:
        return self.base + "due"

    @property
    def ready(self) -> str:
        return self.base + "ready"

    @property
    def leases(self) -> str:
        return self.base + "leases"

    @property
    def by_created(self) -> str:
        return self.base + "by-created"

    @property
    def stats(self) -> str:
        return self.base + "stats"

    @property
    def by_status(self) -> str:
        return self.base + "by-status"

    @property
    def outbox(self) -> str:
        return self.base + "outbox"

    @property
    def relay(self) -> str:
        return self.base + "relay"

    @property
    def activities(self) -> str:
        return self.base + "activities"

    @property
    def activity_payloads(self) -> str:
        return self.base + "act-payloads"

    @property
    def activity_tokens(self) -> str:
        return self.base + "act-tokens"

    @property
    def entities(self) -> str:
        return self.base + "entities"

    @property
    def entity_index(self) -> str:
        return self.base + "ent-index"

    def entity(self, entity_id: str) -> EntityKeys:
        return EntityKeys(*(self.base + name + entity_id for name in
                            ("ent:", "ent-ops:", "ent-held:", "ent-later:", "ent-seen:")))

    def instance(self, instance_id: str) -> str:
        return self.base + "inst:" + instance_id

    def inbox(self, instance_id: str) -> str:
        return self.base + "inbox:" + instance_id

    def history(self, instance_id: str) -> str:
        return self.base + "hist:" + instance_id

    def timers(self, instance_id: str) -> str:
        return self.base + "timers:" + instance_id

    def seen(self, instance_id: str) -> str:
        return self.base + "seen:" + instance_id


@dataclass(frozen=True)
class EntityKeys:
    """The keys of one entity (in its partition, like an instance's)."""

    hash: str
    ops: str
    held: str
    later: str
    seen: str


@dataclass(frozen=True)
class HubKeys:
    """Keys of one task hub with a fixed number of partitions."""

    prefix: str
    hub: str
    partitions: int
    generation: int = 0  # which incarnation of the hub (a deleted and recreated hub has a newer one)
    schema: int = SCHEMA_VERSION  # the hub's key layout (see SCHEMA_VERSION)
    # The keys of each partition, made once (every call about an instance needs its partition's).
    _partition_keys: tuple[PartitionKeys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_partition_keys", tuple(
            PartitionKeys(f"{self.prefix}:{{{self.hub}:{p}}}:") for p in range(self.partitions)))

    @property
    def meta(self) -> str:
        return meta_key(self.prefix, self.hub)

    @property
    def keeps_by_created(self) -> bool:
        """Whether new instances go into the by-created zsets (read by queries of schema-1 hubs)."""
        return self.schema < STATUS_INDEX_SCHEMA

    @property
    def indexes_all(self) -> bool:
        """Whether new instances also get a "*" member in the status index (read by schema-2 hubs)."""
        return self.schema < 3

    def turn(self, job: str) -> str:
        """The lock by which one replica at a time runs a housekeeping job for the hub."""
        return f"{self.prefix}:{{{self.hub}}}:turn:{job}"

    def partition(self, p: int) -> PartitionKeys:
        if 0 <= p < self.partitions:
            return self._partition_keys[p]
        return PartitionKeys(f"{self.prefix}:{{{self.hub}:{p}}}:")

    def for_instance(self, instance_id: str) -> PartitionKeys:
        return self._partition_keys[zlib.crc32(instance_id.encode("utf-8")) % self.partitions]  # partition_of

    def all_partitions(self) -> list[PartitionKeys]:
        return list(self._partition_keys)

    def scan_patterns(self) -> list[str]:
        """Glob patterns that match every key of this hub (hub names hold no glob characters)."""
        return [f"{self.prefix}:{{{self.hub}}}:*", f"{self.prefix}:{{{self.hub}:*}}:*"]

    def owns(self, key: str) -> bool:
        """True only for keys of this hub: guards deletion against look-alike hubs and foreign keys."""
        head = f"{self.prefix}:{{{self.hub}"
        if not key.startswith(head):
            return False
        rest = key[len(head):]
        if rest.startswith("}:"):
            return True
        if not rest.startswith(":"):
            return False
        digits, sep, _ = rest[1:].partition("}:")
        return bool(sep) and digits.isdigit()


def queue_of(key: str) -> tuple[str, int] | None:
    """(queue name, partition) of a partition queue key, as named in a "work", "due" or "outbox"
    wake-up: a work queue, "due" or "outbox"; None for any other text (then any partition may be meant)."""
    head, sep, name = key.rpartition("}:")
    digits = head.rpartition(":")[2]
    if not sep or name not in (*WORK_QUEUES.values(), "due", "outbox") or not digits.isdigit():
        return None
    return name, int(digits)


def lease_member(kind: str, item: str) -> str:
    """The member of a claimed work item in a partition's leases zset (as the Lua prelude builds it)."""
    return f"{kind}|{item}"


def parse_lease_member(member: str) -> tuple[str, str]:
    """(kind, work item) of a leases zset member."""
    kind, _, item = member.partition("|")
    return kind, item


def meta_key(prefix: str, hub: str) -> str:
    return f"{prefix}:{{{hub}}}:meta"


def hubs_key(prefix: str) -> str:
    return f"{prefix}:hubs"


def generations_key(prefix: str) -> str:
    return f"{prefix}:generations"


def events_channel(prefix: str) -> str:
    return f"{prefix}:events"


def dataset_key(prefix: str) -> str:
    """The dataset's identity (hash: ``id``, ``created_ms``, ``adopted_ms``; see store/dataset.py)."""
    return f"{prefix}:dataset"


def dataset_lost_key(prefix: str) -> str:
    """Replicas that find the dataset's identity missing or changed (hash: replica -> since ms)."""
    return f"{prefix}:dataset:lost"
