"""Fixtures shared by every test layer.

Tests that touch Redis use a redis-server that pytest-redis starts on a free
port for this session (never the machine's own Redis), and every test gets its
own key prefix and task hub, so nothing a test did not create is ever touched.
"""
from __future__ import annotations

import uuid

import pytest
from pytest_redis import factories

redis_proc = factories.redis_proc(host="127.0.0.1", port=None)


@pytest.fixture
def redis_url(redis_proc) -> str:
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture
def key_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def hub_name() -> str:
    return "hub-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def rsa_key():
    """An RSA signing key for workload identity tests (RS256; see tests/jwt_keys.py)."""
    from jwt_keys import SigningKey

    return SigningKey("RS256")


@pytest.fixture(scope="module")
def ec_key():
    """An EC signing key for workload identity tests (ES256)."""
    from jwt_keys import SigningKey

    return SigningKey("ES256")
