"""What the store's operations take and return, beside plain values."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import errors
from ..protocol import TERMINAL, quote


@dataclass(frozen=True)
class NewInstance:
    """What StartInstance writes: the instance hash fields, its first event and where it goes."""

    instance_id: str
    fields: dict[str, str | bytes]
    start_event: bytes
    due_ms: int | None = None  # None: ready now
    replaceable: tuple[str, ...] = ()
    same_is_done: bool = False  # an existing instance of the same execution id is this creation, done before


@dataclass(frozen=True)
class Claim:
    """An orchestration work item handed out under a lease."""

    instance_id: str
    token: str
    fields: dict[str, bytes]  # the instance hash after the claim
    past_events: list[bytes]  # the history, serialized HistoryEvents
    new_events: list[bytes]  # the first ``claimed_n`` inbox events
    lease_expiry_ms: int


def claim_of(instance_id: str, token: str, values: list) -> Claim:
    """The claim of a script's reply values (lease expiry, flat hash, history, new events), as
    claim_instance in lua/prelude.lua returns them after the code."""
    expiry, raw, past, new = values
    fields = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
    return Claim(instance_id, token, fields, list(past), list(new), int(expiry))


def state_of(raw: list, event: bytes | None) -> dict[str, bytes]:
    """An instance's state (field name -> raw value, plus ``start_event``: the serialized ExecutionStarted
    event of its current execution, when there is one) of a script's reply values, as instance_state in
    lua/prelude.lua returns them after the code."""
    pairs = iter(raw)
    h = {name.decode(): value for name, value in zip(pairs, pairs)}
    if event:
        h["start_event"] = event
    return h


@dataclass(frozen=True)
class Completion:
    """What applying an episode's result did."""

    readied: bool  # events that arrived during the episode made the instance ready again
    state: dict[str, bytes] | None = None  # asked for and the orchestration ended: its state (see state_of)


@dataclass(frozen=True)
class Promotion:
    """Result of one promote call over a hub's partitions."""

    now_ms: int
    next_due_ms: int | None
    promoted_due_ms: list[int]
    more: bool  # a partition filled its batch: call again at once
    heads: dict[int, int | None] = field(default_factory=dict)  # next due ms of each partition called
    promoted: list[tuple[str, int]] = field(default_factory=list)  # (entry, due ms), when asked for


@dataclass
class PartitionStats:
    statuses: dict[str, int] = field(default_factory=dict)
    due: int = 0
    next_due_ms: int | None = None
    ready: int = 0
    oldest_ready_ms: int | None = None
    outbox: int = 0


@dataclass
class HubStats:
    hub: str
    partitions: int
    now_ms: int
    per_partition: list[PartitionStats]

    @property
    def statuses(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.per_partition:
            for status, count in p.statuses.items():
                total[status] = total.get(status, 0) + count
        return {s: n for s, n in sorted(total.items()) if n}

    @property
    def due(self) -> int:
        return sum(p.due for p in self.per_partition)

    @property
    def next_due_ms(self) -> int | None:
        return min((p.next_due_ms for p in self.per_partition if p.next_due_ms is not None), default=None)

    @property
    def ready(self) -> int:
        return sum(p.ready for p in self.per_partition)

    @property
    def outbox(self) -> int:
        return sum(p.outbox for p in self.per_partition)

    @property
    def oldest_ready_ms(self) -> int | None:
        return min((p.oldest_ready_ms for p in self.per_partition if p.oldest_ready_ms is not None), default=None)


_TOKEN = re.compile(r"(\d{1,16})\|(.+)", re.DOTALL)


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in the (created_ms, instance id) order of queries; pages continue strictly after it."""

    created_ms: int
    instance_id: str

    def encode(self) -> str:
        return f"{self.created_ms}|{self.instance_id}"

    @classmethod
    def decode(cls, token: str, what: str) -> Cursor:
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise errors.InvalidRequest(f"{what} {quote(token)} is not a token this server issued")
        return cls(int(match.group(1)), match.group(2))


@dataclass(frozen=True)
class InstanceFilter:
    """What an instance must be to match; empty or None fields match everything.

    Time bounds are epoch ms, ``*_from_ms`` inclusive and ``*_to_ms`` exclusive. An
    instance without ``completed_ms`` matches no completion bound."""

    statuses: frozenset[str] = frozenset()
    id_prefix: str = ""
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    completed_from_ms: int | None = None
    completed_to_ms: int | None = None
    terminal_only: bool = False

    def matches(self, h: dict[str, bytes]) -> bool:
        status = h["status"].decode()
        if self.statuses and status not in self.statuses:
            return False
        if self.terminal_only and status not in TERMINAL:
            return False
        if self.completed_from_ms is None and self.completed_to_ms is None:
            return True
        if "completed_ms" not in h:
            return False
        completed = int(h["completed_ms"])
        if self.completed_from_ms is not None and completed < self.completed_from_ms:
            return False
        return self.completed_to_ms is None or completed < self.completed_to_ms


@dataclass(frozen=True)
class Found:
    cursor: Cursor
    fields: dict[str, bytes]  # the instance hash, plus ``start_event`` when it was asked for
