"""Fixtures shared by every test layer.

Tests that touch Redis use a redis-server that pytest-redis starts on a free
port for this session (never the machine's own Redis), and every test gets its
own key prefix and task hub, so nothing a test did not create is ever touched.
"""
from __future__ import annotations

import uuid

import pytest
from grpc._cython import cygrpc
from pytest_redis import factories

redis_proc = factories.redis_proc(host="127.0.0.1", port=None)


@pytest.fixture(scope="session", autouse=True)
def _grpc_aio_stays_up():
    """One reference to grpc.aio's process-wide state for the whole session. Every aio server and channel
    holds one, and when the last goes, grpc shuts the state down and joins its poller thread. In a test process,
    where servers and channels of many event loops come and go, that last release can come from the garbage
    collector between tests while a finalised object still has an operation pending, so the poller never drains
    and the join never returns: the session hung there (seen in CI, after a test's teardown). A replica holds one
    server for its whole life and never meets this. The poller thread is a daemon: the process exits all the same."""
    cygrpc.init_grpc_aio()
    yield


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
