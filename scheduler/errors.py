"""Domain errors: the store raises them, the gRPC surface maps each to one status (api/status.py)."""
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
    """A completion or abandon carried a claim token that is no longer current (expired, handed
    back, or unknown); nothing was changed."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"the work item of orchestration instance '{instance_id}' is no longer held by this claim "
            "(its lease expired or it was handed back); the result was discarded")
        self.instance_id = instance_id


class HistoryLimitExceeded(StoreError):
    """An episode would grow an orchestration's history past the configured limit; nothing was written."""

    def __init__(self, instance_id: str, would_be: int) -> None:
        super().__init__(f"the history of '{instance_id}' would grow to {would_be} events")
        self.instance_id = instance_id
        self.would_be = would_be


class StoreUnavailable(StoreError):
    """Redis did not answer (down, unreachable, loading, timed out). Retry later."""


class InvalidRequest(Exception):
    """A request field is malformed; the message names the field and the rule."""


class PayloadTooLarge(InvalidRequest):
    """A payload is over the configured limit."""
