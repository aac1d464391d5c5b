"""What the pipelined connection (pipelining.py) shares with the rest of the store: the errors that say
whether a command was applied, and a Redis URL's options as redis-py reads them."""
from __future__ import annotations

import ssl
from urllib.parse import parse_qs

import redis.exceptions as rexc


class CommandNotSent(rexc.ConnectionError):
    """The command was not written to Redis: it was not applied."""


class ReplyLost(rexc.TimeoutError):
    """The command was written to Redis but its reply did not come back: it may have been applied."""


class NotReplicated(rexc.RedisError):
    """The write was applied on the primary, but fewer replicas than asked acknowledged it in time
    (WAIT): it may be lost if the primary fails now, or it may survive."""


class NotThePrimary(CommandNotSent):
    """The connection reached a Redis that is not the primary (a replica, or one the Sentinels demoted)."""


def not_replicated_message(acks, wanted: int, timeout_ms: int) -> str:
    """What a write that WAIT did not confirm tells its caller; ``acks``: the replicas WAIT counted, or
    the error that took its answer."""
    if isinstance(acks, Exception):
        return (f"the write was applied on the primary, but whether {wanted} replica(s) have it is unknown "
                f"({acks}): it may have been applied")
    return (f"the write was applied on the primary, but only {acks} of {wanted} replica(s) acknowledged it "
            f"within {timeout_ms} ms: it may have been applied, and may be lost if the primary fails now")


def _reply_error(message: str) -> Exception:
    if message.startswith("NOSCRIPT"):
        return rexc.NoScriptError(message)
    if message.startswith("READONLY"):  # a primary demoted under us: a script's write is refused, not applied
        return rexc.ReadOnlyError(message)
    if message.startswith(("LOADING", "BUSY ")):
        return rexc.BusyLoadingError(message)
    return rexc.ResponseError(message)


def url_options(query: str) -> dict[str, str]:
    """The options of a Redis URL's query, decoded, the first of each name (as redis-py reads them)."""
    return {name: values[0] for name, values in parse_qs(query).items() if values}


def ssl_context(params: dict[str, str]) -> ssl.SSLContext:
    """The TLS context of a rediss:// URL's options, as redis-py reads them: ssl_ca_certs (CA bundle),
    ssl_certfile and ssl_keyfile (a client certificate, for mutual TLS), ssl_cert_reqs (none, optional,
    required: the default) and ssl_check_hostname (default true)."""
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    if params.get("ssl_certfile"):
        context.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile"))
    reqs = params.get("ssl_cert_reqs", "required")
    context.check_hostname = reqs == "required" and params.get("ssl_check_hostname", "true").lower() != "false"
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(reqs, ssl.CERT_REQUIRED)
    return context
