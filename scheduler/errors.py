"""Domain errors: the store raises them, the gRPC surface maps each to one status (api/status.py).

Every StoreError but StoreOutcomeUnknown means that nothing was written.
"""
from __future__ import annotations


class StoreError(Exception):
    """Base class of every expected store outcome that is not success."""


class InstanceExists(StoreError):
    def __init__(self, instance_id: str, status: str, done_before: bool = False) -> None:
        super().__init__(f"orchestration instance '{instance_id}' already exists with status {status}")
        self.instance_id = instance_id
        self.status = status
        self.done_before = done_before  # the same creation (same execution id) happened before


class InstanceNotFound(StoreError):
    def __init__(self, instance_id: str) -> None:
        super().__init__(f"orchestration instance '{instance_id}' was not found")
        self.instance_id = instance_id


class FailedPrecondition(StoreError):
    """The instance is not in a state that allows the operation; the message says which state."""


class LeaseLost(FailedPrecondition):
    """A completion or abandon carried a claim token that is no longer the item's claim (another
    claim took the item after it was handed back or its lease expired, it was completed or abandoned
    already, or the token is unknown); nothing was changed."""

    def __init__(self, instance_id: str) -> None:
        what = "entity" if instance_id.startswith("@") else "orchestration instance"
        super().__init__(
            f"the work item of {what} '{instance_id}' is no longer held by this claim (it was completed or "
            "abandoned already, or taken by another worker after it was handed back or its lease expired); "
            "the result was discarded")
        self.instance_id = instance_id


class LimitExceeded(StoreError):
    """A bound of one instance would be passed (see the README's limits table); nothing was written."""


class HistoryLimitExceeded(LimitExceeded):
    def __init__(self, instance_id: str, would_be: int, limit: int) -> None:
        super().__init__(f"the history of orchestration instance '{instance_id}' would grow to {would_be} events; "
                         f"the limit is {limit}")
        self.instance_id = instance_id
        self.would_be = would_be


class InboxFull(LimitExceeded):
    def __init__(self, instance_id: str, limit: int) -> None:
        super().__init__(f"orchestration instance '{instance_id}' already has {limit} pending events, as many as "
                         "it may have (--max-inbox-events); retry once it has processed some")
        self.instance_id = instance_id


class EntityQueueFull(LimitExceeded):
    def __init__(self, entity_id: str, max_operations: int, max_bytes: int) -> None:
        super().__init__(f"entity '{entity_id}' has as many operations waiting as it may have (at most "
                         f"{max_operations}, --max-inbox-events, and {max_bytes} bytes); retry once it has "
                         "processed some")
        self.entity_id = entity_id


class WorkItemTooLarge(LimitExceeded):
    """The instance's next work item (its history and pending events) would pass the message size."""

    def __init__(self, instance_id: str, would_be: int, limit: int) -> None:
        super().__init__(f"the history and pending events of orchestration instance '{instance_id}' would grow "
                         f"to {would_be} bytes; a work item may carry {limit} bytes (--max-message-bytes)")
        self.instance_id = instance_id
        self.would_be = would_be


class StateTooLarge(LimitExceeded):
    """An instance's input, output, custom status and failure would not fit one reply."""

    def __init__(self, instance_id: str, would_be: int, limit: int) -> None:
        super().__init__(f"the input, output, custom status and failure of orchestration instance '{instance_id}' "
                         f"would be {would_be} bytes; a reply may carry {limit} bytes (--max-message-bytes)")
        self.instance_id = instance_id
        self.would_be = would_be


class HubGone(StoreError):
    """The task hub the caller knew was deleted (or deleted and created again) meanwhile; nothing was
    written. The caller looks the hub up again and retries."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"the task hub was deleted, or deleted and created again, while '{subject}' was in use")


class HubNotFound(StoreError):
    """The caller named a task hub that does not exist, where only an admin may create one."""

    def __init__(self, hub: str) -> None:
        super().__init__(f"task hub '{hub}' does not exist; an admin creates it with CreateTaskHub")
        self.hub = hub


class TooManyTaskHubs(LimitExceeded):
    def __init__(self, hub: str, limit: int) -> None:
        super().__init__(f"task hub '{hub}' was not created: there are {limit} task hubs, the most "
                         f"--max-task-hubs allows; delete one first")
        self.hub = hub


class HubDeleting(StoreError):
    def __init__(self, hub: str) -> None:
        super().__init__(f"task hub '{hub}' is being deleted; retry once the deletion has finished")
        self.hub = hub


class Draining(StoreError):
    """This replica is shutting down and takes no new work streams: connect to another one."""

    def __init__(self) -> None:
        super().__init__("this replica is shutting down and takes no new work streams; reconnect to another")


class StoreUnavailable(StoreError):
    """Redis did not answer (down, unreachable, loading) and the command was not applied. Retry later."""


class StoreOutcomeUnknown(StoreError):
    """A command reached Redis (or may have) but its reply did not come back: it may or may not have
    been applied."""


class NotReplicated(StoreOutcomeUnknown):
    """A write was applied on the Redis primary, but fewer replicas than --redis-min-replica-acks
    acknowledged it in time: it may have been applied (and may be lost if the primary fails now)."""


class DatasetLost(StoreUnavailable):
    """Redis does not hold the dataset identity this replica knows (emptied, replaced, failed over to a
    replica that never had it): nothing is written until an operator adopts the dataset."""


class RedisOutOfMemory(StoreError):
    """Redis refused a write: it is at its maxmemory. Nothing was written."""


class InvalidRequest(Exception):
    """A request field is malformed; the message names the field and the rule."""


class PayloadTooLarge(InvalidRequest):
    """A payload is over the configured limit."""
