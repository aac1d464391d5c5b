"""Request validation: each rule raises InvalidRequest with a message a person understands."""
from __future__ import annotations

from google.protobuf import timestamp_pb2

from .._proto import orchestrator_service_pb2 as pb
from ..errors import InvalidRequest, PayloadTooLarge
from ..protocol import MAX_ID_LENGTH, has_control_chars, is_entity_id, quote

_KNOWN_STATUSES = frozenset(pb.OrchestrationStatus.values())
MAX_NAME_LENGTH = 1024
# Range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_SECONDS = -62135596800
MAX_SECONDS = 253402300799


def check_identifier(what: str, value: str) -> None:
    """Instance and execution ids: at most 256 characters, no control characters."""
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRequest(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if has_control_chars(value):
        raise InvalidRequest(f"{what} {quote(value)} contains control characters, which are not allowed")


def check_name(what: str, value: str) -> None:
    if not value.strip():
        raise InvalidRequest(f"{what} is required and must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if has_control_chars(value):
        raise InvalidRequest(f"{what} {quote(value)} contains control characters, which are not allowed")


def check_timestamp(what: str, ts: timestamp_pb2.Timestamp) -> None:
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS:
        raise InvalidRequest(
            f"{what} has seconds={ts.seconds}, outside the valid range "
            f"[{MIN_SECONDS}, {MAX_SECONDS}] (years 1 to 9999)")
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidRequest(f"{what} has nanos={ts.nanos}; nanos must be between 0 and 999999999")


MAX_DURATION_SECONDS = 315_576_000_000  # the range of google.protobuf.Duration


def duration_seconds(what: str, duration) -> float:
    """Seconds of a google.protobuf.Duration field, checked against the Duration's range."""
    if not -MAX_DURATION_SECONDS <= duration.seconds <= MAX_DURATION_SECONDS or \
            not -999_999_999 <= duration.nanos <= 999_999_999:
        raise InvalidRequest(f"{what} ({duration.seconds} s, {duration.nanos} ns) is outside the range of a "
                             "Duration (about 10,000 years)")
    return duration.seconds + duration.nanos / 1e9


def check_entity_id(what: str, value: str) -> None:
    """An entity instance id: ``@<name>@<key>`` with a name, at most 256 characters, no control characters."""
    check_identifier(what, value)
    if not is_entity_id(value):
        raise InvalidRequest(f"{what} {quote(value)} is not an entity id: it must look like @<name>@<key>")


def check_payload(what: str, value: str, limit: int) -> None:
    if len(value) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character: it fits, no need to encode it
        return
    size = len(value.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes; the configured limit is {limit} bytes")


def check_create_request(req: pb.CreateInstanceRequest, instance_id: str, max_payload_bytes: int,
                         max_state_bytes: int) -> None:
    """Every rule for StartInstance; ``instance_id`` is the given or generated id."""
    check_identifier("instanceId", instance_id)
    if instance_id.startswith("@"):
        raise InvalidRequest(f"instanceId {quote(instance_id)} starts with '@', which marks entity ids "
                             "(@name@key); signal an entity with SignalEntity")
    check_name("name", req.name)
    if req.HasField("executionId") and req.executionId.value:
        check_identifier("executionId", req.executionId.value)
    if req.HasField("version"):
        check_identifier("version", req.version.value)
    for field in ("scheduledStartTimestamp", "requestTime"):
        if req.HasField(field):
            check_timestamp(field, getattr(req, field))
    if req.HasField("input"):
        check_payload("input", req.input.value, max_payload_bytes)
    size = req.ByteSize()  # the input with the tags and the rest must fit one reply (GetInstance)
    if size > max_state_bytes:
        raise PayloadTooLarge(f"the request (input, tags, names) is {size} bytes; an instance's state may be "
                              f"{max_state_bytes} bytes (--max-message-bytes)")
    for status in req.orchestrationIdReusePolicy.replaceableStatus:
        if status not in _KNOWN_STATUSES:
            raise InvalidRequest(f"orchestrationIdReusePolicy.replaceableStatus holds unknown status {status}")
