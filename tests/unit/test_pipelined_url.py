"""The pipelined connection reads a Redis URL's credentials and database as redis-py's pool does, so every
connection path logs in alike whatever form the URL takes."""
from __future__ import annotations

import pytest
from redis.connection import parse_url

from scheduler.store.pipelining import PipelinedConnection


@pytest.mark.parametrize("url", [
    "redis://h:1/0",
    "redis://:pw@h:1/0",
    "redis://user:pw@h:1/2",
    "redis://h:1/0?password=pw",
    "redis://h:1/0?username=user&password=pw",
    "redis://user@h:1/0?password=pw",
    "redis://user:pw@h:1/0?username=other&password=other",  # the user info wins
    "redis://h:1/0?password=p%26w%40x",  # percent-encoded
    "redis://us%40er:p%3Aw@h:1/0",
    "redis://h:1/2?db=5",  # db= wins over the path
    "redis://h:1/0?password=first&password=second",  # the first of each name
])
def test_credentials_and_database_as_redis_py_reads_them(url):
    expected = parse_url(url)
    conn = PipelinedConnection(url)
    assert conn.username == expected.get("username")
    assert conn.password == expected.get("password")
    assert conn.db == expected.get("db", 0)
