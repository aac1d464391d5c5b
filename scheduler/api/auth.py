"""Who may call what: bearer tokens, roles and task hubs.

Callers send ``authorization: Bearer <token>`` metadata (the header the SDKs' managed backends
send beside ``taskhub``). The tokens file (``--auth-tokens-file``, mounted from a Secret and re-read
when it changes, see :class:`TokenFile`) holds no token, only its SHA-256 hash, with the identity it stands
for; every entry names its task hubs (``["*"]`` for all)::

    {"tokens": [
      {"name": "orders-api", "sha256": "<hex of sha256(token)>", "role": "client", "hubs": ["orders"]},
      {"name": "ops", "sha256": "<...>", "role": "admin", "hubs": ["*"]}
    ]}

A presented token is hashed and compared with every stored hash in constant time. Roles:
``reader`` (get, wait, query, list, history) is part of ``client`` (+ start, raise, suspend,
resume, terminate, restart, signal); ``worker`` (work items, completions, abandons); ``admin``
(everything, including task hub create and delete, purge, entity storage clean-up). No token:
UNAUTHENTICATED; a role or task hub the identity lacks: PERMISSION_DENIED. ``dt-scheduler
hash-token`` prints the hash of a token. Long calls (work streams, waits) are checked again whenever
the identities change (the tokens file or the JWKS file), and end at once when their caller lost access
(:meth:`Authenticator.changed`). With ``--auth-jwks-file``, a bearer token shaped as a JWT is a
workload's token instead, its subject looked up in the file's ``subjects`` (api/jwt_auth.py); a long
call made with a JWT ends when the JWT expires (:meth:`Authenticator.expire`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from .jwt_auth import InvalidJwt, JwtVerifier, looks_like_jwt
from .roles import ANONYMOUS, Identity
from .tokens import TokenFile

log = logging.getLogger(__name__)


class Unauthenticated(Exception):
    pass


class PermissionDenied(Exception):
    pass


class Authenticator:
    """Identifies the caller of a call and checks what it may do; ends the long calls (work streams,
    waits) of callers that lose access when the identities change."""

    def __init__(self, tokens: TokenFile | None, jwt: JwtVerifier | None = None) -> None:
        """``jwt``: verifies workloads' JWTs (their subjects are in ``tokens``); None: no JWTs."""
        self.tokens = tokens
        self._long_calls: set[_LongCall] = set()
        if tokens is not None:
            tokens.listeners.append(self.changed)
        self.jwt = jwt
        if jwt is not None:
            jwt.jwks.listeners.append(self.changed)

    def identify(self, metadata) -> Identity:
        """The caller's identity; Unauthenticated without a valid bearer token (when tokens are required)."""
        if self.tokens is None:
            return ANONYMOUS
        header = _authorization(metadata)
        if header is None:
            raise Unauthenticated("this server requires a bearer token: send 'authorization: Bearer <token>' "
                                  "metadata")
        token = _bearer(header)
        if token is None:
            raise Unauthenticated("the authorization metadata is not 'Bearer <token>'")
        if self.jwt is not None and looks_like_jwt(token):
            return self._identify_jwt(token)
        identity = self.tokens.identify(token)
        if identity is None:
            raise Unauthenticated("the bearer token is not one this server knows")
        return identity

    def _identify_jwt(self, token: str) -> Identity:
        try:
            subject = self.jwt.subject(token)
        except InvalidJwt as exc:
            raise Unauthenticated(str(exc)) from None
        identity = self.tokens.subject(subject)
        if identity is None:  # a workload the cluster vouches for, but not one allowed here
            raise PermissionDenied(f"{subject} has no entry in the subjects of the tokens file")
        return identity

    @staticmethod
    def check(identity: Identity, method: str, hub: str | None) -> None:
        """PermissionDenied unless the identity may call ``method`` on task hub ``hub``."""
        if not identity.may(method):
            raise PermissionDenied(f"{identity.name} (role {identity.role}) may not call {method}")
        if hub is not None and not identity.may_use(hub):
            raise PermissionDenied(f"{identity.name} may not use task hub {hub!r}")

    async def revocable(self, call: Awaitable, metadata, method: str, hub: str | None):
        """Await ``call``, a long call (a work stream, a wait) made with ``metadata`` in this task. When the
        identities change (:meth:`changed`) so that its caller may no longer make it, it is cancelled at
        once (a work stream's ``finally`` hands its work back) and this raises Unauthenticated (the
        credentials are no longer valid) or PermissionDenied (the role or the task hub was taken away)."""
        held = _LongCall(metadata, method, hub, asyncio.current_task())
        if self.jwt is not None:
            header = _authorization(held.metadata)
            token = None if header is None else _bearer(header)
            if token is not None and looks_like_jwt(token):
                held.ends_at = self.jwt.ends_at(token)
        self._long_calls.add(held)
        try:
            return await call
        except asyncio.CancelledError:
            if held.revoked is None:
                raise
            held.task.uncancel()
            raise held.revoked from None
        finally:
            self._long_calls.discard(held)

    @property
    def long_calls(self) -> int:
        """Long calls open now (that a change of the identities would check again)."""
        return len(self._long_calls)

    def changed(self) -> None:
        """The identities changed: each long call is checked again with the credentials it was made with,
        and ends if they no longer allow it."""
        self._recheck(list(self._long_calls), "the identities changed")

    def expire(self, now: float | None = None) -> None:
        """End the long calls made with a JWT that has expired since (the replica's housekeeping calls
        this every half second)."""
        now = time.time() if now is None else now
        for held in list(self._long_calls):
            if held.ends_at is not None and held.ends_at <= now:
                held.revoke(Unauthenticated(f"the bearer token is not a valid JWT: it has expired (while "
                                            f"{held.method} was open)"))

    def _recheck(self, calls: list[_LongCall], why: str) -> None:
        for held in calls:
            try:
                self.check(self.identify(held.metadata), held.method, held.hub)
            except (Unauthenticated, PermissionDenied) as exc:
                held.revoke(type(exc)(f"{exc} ({why} while {held.method} was open)"))


class _LongCall:
    """A long call that :meth:`Authenticator.changed` re-checks: the credentials (metadata) it was made with."""

    __slots__ = ("metadata", "method", "hub", "task", "revoked", "ends_at")

    def __init__(self, metadata, method: str, hub: str | None, task: asyncio.Task) -> None:
        self.metadata = tuple(metadata)
        self.method = method
        self.hub = hub
        self.task = task
        self.revoked: Unauthenticated | PermissionDenied | None = None
        self.ends_at: float | None = None  # when its JWT expires (epoch seconds), if made with one

    def revoke(self, why: Unauthenticated | PermissionDenied) -> None:
        """End the call (once) with ``why``."""
        if self.revoked is None:
            self.revoked = why
            self.task.cancel()


def _authorization(metadata) -> str | None:
    """The value of the ``authorization`` metadata, if any."""
    return next((value for key, value in metadata or () if key == "authorization"), None)


def _bearer(header: str) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value; None when it is not one (an empty token is
    never one, whatever the file holds)."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_hub(request) -> str | None:
    """The task hub a completion token names (None if it names none: the call itself rejects it)."""
    token = getattr(request, "completionToken", "")
    hub, sep, _ = token.partition("|")
    return hub if sep else None

