"""Request validation: each rule, its boundary and its message."""
from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from scheduler.api import validation as v
from scheduler.errors import InvalidRequest, PayloadTooLarge


def test_identifier_limit_is_256_characters():
    v.check_identifier("instanceId", "x" * 256)
    with pytest.raises(InvalidRequest) as e:
        v.check_identifier("instanceId", "x" * 257)
    assert str(e.value) == "instanceId is 257 characters long; the limit is 256"


@pytest.mark.parametrize("bad", ["a\x00b", "tab\there", "new\nline", "\x1f", "del\x7f", "c1\x85", "\x9f"])
def test_identifier_rejects_control_characters(bad):
    with pytest.raises(InvalidRequest, match="executionId .* contains control characters"):
        v.check_identifier("executionId", bad)


@pytest.mark.parametrize("ok", ["", "a", "ü-ñ-日本", "with space", "a:b{c}*?", "\xa0nbsp", "x" * 256])
def test_identifier_accepts_printable_text(ok):
    v.check_identifier("instanceId", ok)


@pytest.mark.parametrize("empty", ["", " ", "\t \n"])
def test_name_is_required(empty):
    with pytest.raises(InvalidRequest) as e:
        v.check_name("name", empty)
    assert str(e.value) == "name is required and must not be empty"


def test_name_length_limit_is_1024():
    v.check_name("name", "n" * 1024)
    with pytest.raises(InvalidRequest, match="name is 1025 characters long; the limit is 1024"):
        v.check_name("name", "n" * 1025)


def test_name_rejects_control_characters():
    with pytest.raises(InvalidRequest, match="contains control characters"):
        v.check_name("name", "My\x07Orchestration")


@pytest.mark.parametrize("seconds", [v.MIN_SECONDS, 0, 1_700_000_000, v.MAX_SECONDS])
@pytest.mark.parametrize("nanos", [0, 1, 999_999_999])
def test_timestamp_accepts_the_valid_range(seconds, nanos):
    v.check_timestamp("scheduledStartTimestamp", Timestamp(seconds=seconds, nanos=nanos))


@pytest.mark.parametrize("seconds", [v.MIN_SECONDS - 1, v.MAX_SECONDS + 1, 2**62])
def test_timestamp_rejects_seconds_out_of_range(seconds):
    with pytest.raises(InvalidRequest) as e:
        v.check_timestamp("scheduledStartTimestamp", Timestamp(seconds=seconds))
    msg = str(e.value)
    assert msg.startswith(f"scheduledStartTimestamp has seconds={seconds}, outside the valid range")
    assert "years 1 to 9999" in msg


@pytest.mark.parametrize("nanos", [-1, 1_000_000_000, 2**31 - 1])
def test_timestamp_rejects_nanos_out_of_range(nanos):
    with pytest.raises(InvalidRequest) as e:
        v.check_timestamp("requestTime", Timestamp(seconds=1, nanos=nanos))
    assert str(e.value) == f"requestTime has nanos={nanos}; nanos must be between 0 and 999999999"


def test_payload_limit_counts_utf8_bytes():
    v.check_payload("input", "x" * 10, 10)
    v.check_payload("input", "é" * 5, 10)  # 10 bytes
    with pytest.raises(PayloadTooLarge) as e:
        v.check_payload("input", "é" * 6, 10)  # 6 characters, 12 bytes
    assert str(e.value) == "input is 12 bytes; the configured limit is 10 bytes"
    assert isinstance(e.value, InvalidRequest)
