"""The shared vocabulary, below the gRPC surface, the engine and the store.

Status names, ids and times, and the formats that one layer writes and another
reads: claim tokens, work items and outbox messages, each built and parsed side by
side here. Nothing here imports the generated protobuf module, so the store (and
the SDK end-to-end tests, which must not load it) can use all of it.
"""
from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from .errors import InvalidRequest

# -- statuses ------------------------------------------------------------------------------
# The names are the protocol's OrchestrationStatus names without their prefix; the store
# writes them as they are, and the Lua prelude gets the same sets (store/scripts.py).

STATUS_PREFIX = "ORCHESTRATION_STATUS_"
# Every status an instance can have (the protocol's OrchestrationStatus names).
STATUSES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "FAILED", "TERMINATED", "CANCELED",
                      "CONTINUED_AS_NEW"})
TERMINAL = frozenset({"COMPLETED", "FAILED", "TERMINATED"})  # an instance in one never runs again
IDLE = TERMINAL | {"SUSPENDED"}  # an instance in one is not dispatched


QUOTE_LIMIT = 64  # characters of a bad value that an error message quotes


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """A client's value for an error message: quoted, and cut to ``limit`` characters (the rest is counted)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


# -- ids and times -------------------------------------------------------------------------

MAX_ID_LENGTH = 256
# C0 and C1 control characters, and DEL: never in an id (work item names rely on it).
has_control_chars = re.compile("[\x00-\x1f\x7f-\x9f]").search


def is_valid_id(value: str) -> bool:
    """An instance id this service accepts: not empty, at most 256 characters, no control characters."""
    return bool(value) and len(value) <= MAX_ID_LENGTH and not has_control_chars(value)

def is_entity_id(value: str) -> bool:
    """An entity instance id, ``@<name>@<key>`` (the SDKs' EntityInstanceId): a valid id whose name is
    not empty. Orchestration instance ids may not start with "@"."""
    return is_valid_id(value) and value.startswith("@") and value.find("@", 1) > 1


def entity_name(entity_id: str) -> str:
    """The name part of an entity id (what entity work-item filters name)."""
    return entity_id[1:entity_id.index("@", 1)]


_IDS_PER_READ = 256
_ids: list[str] = []  # ids made from one os.urandom() read, not handed out yet
os.register_at_fork(after_in_child=_ids.clear)  # a child process must not hand out its parent's ids


def new_id() -> str:
    """A random 128-bit id in hex (what uuid4().hex gives, without building a UUID). The random bytes
    come from os.urandom(), read for 256 ids at a time: its system call costs more than the rest.
    list.pop() is atomic, so no two callers (threads) get the same id."""
    try:
        return _ids.pop()
    except IndexError:
        block = os.urandom(16 * _IDS_PER_READ).hex()
        _ids.extend(block[i:i + 32] for i in range(32, len(block), 32))
        return block[:32]


def due_ms(ts: timestamp_pb2.Timestamp) -> int:
    """Epoch ms of a timestamp, rounded up so that nothing due at it can be promoted early."""
    return ts.seconds * 1000 + math.ceil(ts.nanos / 1_000_000)


def ts_from_ms(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def ts_from_text(text: bytes) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text.decode())
    return ts


# -- de-duplication ----------------------------------------------------------------------------
# De-duplication of messages by id (outbox deliveries, entity signals and calls, terminations), the
# same rule for instances and entities: an id is remembered for this window after it was taken, and
# at most DEDUP_MAX_IDS ids per instance or entity (the oldest are forgotten first). A message delivered
# again within the window (a relay that died between applying and removing it, a client's retry with
# the same request id) changes nothing.
DEDUP_WINDOW_MS = 3_600_000
DEDUP_MAX_IDS = 100_000


# -- work items and claim tokens -------------------------------------------------------------
# A work item is named by a string that starts with its orchestration's instance id (ids hold
# no control characters): an orchestration work item by the id itself, an activity work item
# by "<instance id>\n<execution id>\n<task id>". Work items are leased under a claim token
# that names what it claims, so any replica can take a completion or an abandon.

ORCHESTRATION = "o"  # kinds of work item, as they appear in claim tokens and lease members
ACTIVITY = "a"
ENTITY = "e"  # an entity's batch of operations; the work item is named by the entity id
_KIND_NAMES = {ORCHESTRATION: "an orchestration", ACTIVITY: "an activity", ENTITY: "an entity"}


def activity_item(instance_id: str, execution_id: str, task_id: int) -> str:
    return f"{instance_id}\n{execution_id}\n{task_id}"


def parse_activity_item(item: str) -> tuple[str, str, int]:
    """(instance id, execution id, task id) of an activity work item."""
    instance_id, execution_id, task_id = item.split("\n")
    return instance_id, execution_id, int(task_id)


def instance_of(item: str) -> str:
    """The orchestration instance id of a work item of any kind."""
    return item.split("\n", 1)[0]


@dataclass(frozen=True)
class ClaimToken:
    """A parsed claim token: ``<hub>|<partition>|<kind>|<work item>|<random>``."""

    hub: str
    kind: str
    item: str

    @property
    def instance_id(self) -> str:
        return instance_of(self.item)


def claim_token(hub: str, partition: int, kind: str, item: str) -> str:
    """A fresh, unguessable claim token that names what it claims."""
    return f"{hub}|{partition}|{kind}|{item}|{secrets.token_hex(8)}"


def parse_claim_token(token: str, kind: str) -> ClaimToken:
    """The claim a token names; InvalidRequest unless it is a token of this kind that we issued."""
    hub, sep1, rest = token.partition("|")
    partition, sep2, rest = rest.partition("|")
    token_kind, sep3, rest = rest.partition("|")
    item, sep4, _ = rest.rpartition("|")
    valid = sep1 and sep2 and sep3 and sep4 and partition.isdigit() and token_kind == kind and item
    if valid and kind == ACTIVITY:
        parts = item.split("\n")
        valid = len(parts) == 3 and parts[2].lstrip("-").isdigit()
    if valid and kind == ENTITY:
        valid = is_entity_id(item)
    if not valid or not is_valid_id(instance_of(item)):
        raise InvalidRequest(f"completionToken {quote(token)} is not a token this service issued for "
                             f"{_KIND_NAMES[kind]}")
    return ClaimToken(hub, kind, item)


# -- outbox messages -----------------------------------------------------------------------
# Work that crosses instances leaves through an outbox, written in the sender's atomic step
# and delivered by the relay (engine/relay.py). Kinds: "create" (payload: the child's
# ExecutionStarted event), "event" (the event to append), "terminate" (an
# ExecutionTerminated event), "entity" (an EntityMessage for an entity), "start" (an
# orchestration an entity starts: its ExecutionStarted event) and "rewind" (an
# ExecutionRewound event naming the child to run again, as it was created, and its parent's
# new execution). The Lua prelude builds "entity" and "event" messages of lock requests in
# this format too. An event bound for one execution of its target (a child's end, or the failure of
# its creation, for the parent execution that created it) names it after the target id, separated by
# a tab (ids hold no control characters): the target drops it once it is another execution.

@dataclass(frozen=True)
class OutboxMessage:
    message_id: str  # unique per sender and action: the target de-duplicates by it
    kind: str
    target: str  # instance id
    payload: bytes  # a serialized HistoryEvent
    execution: str = ""  # the target's execution it is meant for ("": whichever runs)

    def encode(self) -> bytes:
        target = f"{self.target}\t{self.execution}" if self.execution else self.target
        return f"{self.message_id}\n{self.kind}\n{target}\n".encode() + self.payload

    @classmethod
    def decode(cls, raw: bytes) -> OutboxMessage:
        message_id, kind, target, payload = raw.split(b"\n", 3)
        instance_id, _, execution = target.decode().partition("\t")
        return cls(message_id.decode(), kind.decode(), instance_id, payload, execution)


# -- entity messages -----------------------------------------------------------------------
# What waits in an entity's queues (store/lua/prelude.lua reads the header of these records and
# builds the next lock request of a lock set itself, in this format):
#   "<kind>\n<id>\n<parent>\n<arg>\n<lock set>\n<payload>"
# kind: SIGNAL, CALL (operations a worker runs; payload: the HistoryEvent handed to it), LOCK (a
# critical section's lock request; arg: the position in the lock set, the tab-separated entity ids
# in one global order; payload: the EntityLockGranted event for the orchestration) or UNLOCK. id: the
# request id of an operation, the critical section id of a lock or unlock. parent: the
# orchestration instance that calls, locks or unlocks ("" for a signal). arg of a signal: the time
# it is due (epoch ms), or "" for now. Ids hold no control characters, so the fields cannot clash.

SIGNAL, CALL, LOCK, UNLOCK = "s", "c", "l", "u"


@dataclass(frozen=True)
class EntityMessage:
    kind: str
    id: str
    parent: str = ""
    arg: str = ""
    lock_set: tuple[str, ...] = ()
    payload: bytes = b""

    @property
    def due_ms(self) -> int | None:
        """When a delayed signal is due (epoch ms); None for now."""
        return int(self.arg) if self.kind == SIGNAL and self.arg else None

    def encode(self) -> bytes:
        head = "\n".join((self.kind, self.id, self.parent, self.arg, "\t".join(self.lock_set)))
        return head.encode() + b"\n" + self.payload

    @classmethod
    def decode(cls, raw: bytes) -> EntityMessage:
        kind, id_, parent, arg, lock_set, payload = raw.split(b"\n", 5)
        locks = tuple(lock_set.decode().split("\t")) if lock_set else ()
        return cls(kind.decode(), id_.decode(), parent.decode(), arg.decode(), locks, payload)
