"""Redis options of the configuration that need more than a check: the Sentinels, and URLs as logs show them.

Only :mod:`scheduler.config` reads flags and the environment; it calls these.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import unquote, urlparse, urlunparse


def sentinel_addresses(text: str, what: str = "--redis-sentinels") -> list[tuple[str, int]]:
    """The (host, port) pairs of ``--redis-sentinels`` HOST:PORT[,HOST:PORT...]; ValueError naming the flag."""
    addresses = []
    for item in text.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what}: {item.strip()!r} is not HOST:PORT (a list is comma-separated)")
        addresses.append((host, int(port)))
    return addresses


def check_sentinels(config, flag: Callable[[str], str]) -> None:
    """ValueError (naming the flags) unless the Sentinel options of ``config`` go together; with
    Sentinels and no --redis-url, the URL is a default one (it gives only options)."""
    if config.redis_sentinels is None:
        given = [flag(name) for name in ("redis_sentinel_master", "redis_sentinel_username",
                                         "redis_sentinel_password", "redis_sentinel_password_file")
                 if getattr(config, name) is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} only apply with {flag('redis_sentinels')}")
        return
    sentinel_addresses(config.redis_sentinels, flag('redis_sentinels'))  # ValueError naming the flag
    if not config.redis_sentinel_master:
        raise ValueError(f"{flag('redis_sentinels')} needs {flag('redis_sentinel_master')}: the name the "
                         f"Sentinels monitor the primary under")
    if config.redis_cluster:
        raise ValueError(f"{flag('redis_sentinels')} and {flag('redis_cluster')} exclude each other: a Redis "
                         f"Cluster fails over by itself, without Sentinels")
    if config.redis_sentinel_password is not None and config.redis_sentinel_password_file is not None:
        raise ValueError(f"give {flag('redis_sentinel_password')} or {flag('redis_sentinel_password_file')}, "
                         f"not both")
    if config.redis_sentinel_password_file is not None and not os.path.isfile(config.redis_sentinel_password_file):
        raise ValueError(f"{flag('redis_sentinel_password_file')}: no such file "
                         f"{config.redis_sentinel_password_file!r}")
    if config.redis_url is None:  # the URL gives the database, credentials and TLS; its host is not used
        object.__setattr__(config, "redis_url", "redis://localhost/0")


def redacted(url: str | None) -> str | None:
    """The URL without its password, for logs: the password of the user info and every ``password``
    option of the query become ``***`` (the user name, host and other options stay)."""
    if url is None:
        return None
    parsed = urlparse(url)
    netloc = parsed.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.split(":", 1)[0] + ":***@" + host
    options = parsed.query.split("&") if parsed.query else []
    query = "&".join("password=***" if unquote(option.partition("=")[0]) == "password" else option
                     for option in options)
    return urlunparse(parsed._replace(netloc=netloc, query=query))


def first_line(path: str | None) -> str | None:
    """The first line of the file at ``path`` (a mounted secret), None without a path."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        return file.readline().rstrip("\r\n")
