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
the identities change, and end at once when their caller lost access (:meth:`Authenticator.changed`).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import prometheus_client

from ..config import NAME_RE

log = logging.getLogger(__name__)

READ = frozenset({"Hello", "GetInstance", "WaitForInstanceStart", "WaitForInstanceCompletion", "QueryInstances",
                  "ListInstanceIds", "StreamInstanceHistory", "GetEntity", "QueryEntities"})
CLIENT = READ | {"StartInstance", "RaiseEvent", "TerminateInstance", "SuspendInstance", "ResumeInstance",
                 "RestartInstance", "RewindInstance", "SignalEntity", "SkipGracefulOrchestrationTerminations"}
WORK = frozenset({"Hello", "GetWorkItems", "CompleteActivityTask", "CompleteOrchestratorTask", "CompleteEntityTask",
                  "AbandonTaskActivityWorkItem", "AbandonTaskOrchestratorWorkItem", "AbandonTaskEntityWorkItem",
                  "StreamInstanceHistory"})
ADMIN_ONLY = frozenset({"CreateTaskHub", "DeleteTaskHub", "PurgeInstances", "CleanEntityStorage"})
ROLES: dict[str, frozenset[str]] = {"reader": READ, "client": CLIENT, "worker": WORK,
                                    "admin": CLIENT | WORK | ADMIN_ONLY}
# Calls whose completion token, not the taskhub metadata, names the task hub they act on.
TOKEN_HUB_CALLS = frozenset({"CompleteActivityTask", "CompleteOrchestratorTask", "CompleteEntityTask",
                             "AbandonTaskActivityWorkItem", "AbandonTaskOrchestratorWorkItem",
                             "AbandonTaskEntityWorkItem"})
# Calls that may stay open long: re-checked when the identities change (Authenticator.revocable).
LONG_CALLS = frozenset({"GetWorkItems", "WaitForInstanceStart", "WaitForInstanceCompletion", "StreamInstanceHistory"})


class Unauthenticated(Exception):
    pass


class PermissionDenied(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    hubs: frozenset[str]  # task hub names, or "*" for every hub

    def may(self, method: str) -> bool:
        return method in ROLES[self.role]

    def may_use(self, hub: str) -> bool:
        return "*" in self.hubs or hub in self.hubs


ANONYMOUS = Identity("anonymous", "admin", frozenset({"*"}))  # without authentication: anyone may do anything


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokensFileError(ValueError):
    """The tokens file cannot be used: one line naming the file and, when there is one, the entry."""


EMPTY_TOKEN_DIGEST = hashlib.sha256(b"").digest()
ERROR_REPEAT_SECONDS = 60.0  # a tokens file that cannot be used is logged again this often until fixed
LAZY_CHECK_SECONDS = 1.0  # a call checks the file at most this often (the watcher checks it more often)

_tokens_file_valid: prometheus_client.Gauge | None = None


def tokens_file_valid() -> prometheus_client.Gauge:
    """The gauge ``dt_auth_tokens_file_valid``, registered with the first tokens file (without one, it is not
    served: a 0 there would look like a broken file). With --processes, the lowest of the processes."""
    global _tokens_file_valid
    if _tokens_file_valid is None:
        _tokens_file_valid = prometheus_client.Gauge(
            "dt_auth_tokens_file_valid", "1 while the tokens file was read and is valid; 0 while it is malformed or "
            "unreadable (the last good set is in use) or gone (no token is valid)", multiprocess_mode="livemin")
    return _tokens_file_valid


class TokenFile:
    """The identities of the tokens file, re-read when it changes: :meth:`refresh` (a watcher in the
    app calls it twice a second) and, at most once a second, a call's :meth:`identify`. Each change
    of the identities calls the ``listeners`` (the authenticator re-checks its long calls).

    On a change the file is strict again (see :func:`parse_tokens`), and:

    - a deleted file means no token is valid (fail closed): removing the file is a way to revoke;
    - a malformed or unreadable file keeps the last good set and logs an ERROR line, repeated every
      minute, with ``dt_auth_tokens_file_valid`` 0, until it is fixed. That is safe: a malformed edit
      must not open the service (an empty or half-written set must not mean "anyone"), and revoking
      everything on a typo would take the whole fleet down; but a revocation must never be silently
      ignored, so the operator is told, loudly and until the file is fixed, that the set in use is an
      old one.
    """

    def __init__(self, path: str, clock=None, transport_warning: str | None = None) -> None:
        """TokensFileError unless the file can be read and is valid. ``transport_warning``: said
        (WARNING) at start and on each reload, e.g. that tokens travel in plaintext."""
        self.path = path
        self._clock = clock or time.monotonic
        self._transport_warning = transport_warning
        self._version: tuple | None = None
        self._checked = float("-inf")
        self._entries: list[tuple[bytes, Identity]] = []
        self.listeners: list[Callable[[], None]] = []
        self.problem: str | None = None  # why the file in use is not the file on disk (None: it is)
        self._problem_logged = float("-inf")
        try:
            self._version = _version_of(path)
            self._entries = self._read()
        except (OSError, ValueError) as exc:
            raise TokensFileError(f"--auth-tokens-file (DT_AUTH_TOKENS_FILE) {path}: {_one_line(exc)}") from None
        tokens_file_valid().set(1)
        self._warn()

    @property
    def valid(self) -> bool:
        return self.problem is None

    def identify(self, token: str) -> Identity | None:
        if self._clock() - self._checked >= LAZY_CHECK_SECONDS:
            self.refresh()
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for digest, identity in self._entries:  # every entry, so the time taken says nothing
            if hmac.compare_digest(presented, digest) and found is None:
                found = identity
        return found

    def refresh(self) -> None:
        """Re-read the file if it changed (or went away); tell the listeners when the identities did."""
        now = self._checked = self._clock()
        before = self._entries
        try:
            version = _version_of(self.path)
            if version == self._version:
                if self.problem is not None:  # still the file that cannot be used: said again every minute
                    self._broken(now, self.problem)
                return
            self._version = version  # (a file that cannot be used is read again once it changes)
            self._entries = self._read()
            self._fixed()
        except FileNotFoundError:
            self._version = None
            if self._entries:
                self._entries = []  # fail closed
            self._broken(now, "the file is gone: no token is valid until it is back")
        except (OSError, ValueError) as exc:
            self._broken(now, f"{_one_line(exc)}; the last good set of {len(self._entries)} identities stays in "
                              "use (a token removed meanwhile still works) until the file is fixed")
        finally:
            if self._entries is not before:
                for listener in list(self.listeners):
                    listener()

    def _read(self) -> list[tuple[bytes, Identity]]:
        with open(self.path, "rb") as f:
            data = f.read()
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        return parse_tokens(document)

    def _fixed(self) -> None:
        if self.problem is not None:
            log.warning("the tokens file %s is valid again", self.path)
        self.problem = None
        tokens_file_valid().set(1)
        log.info("tokens file re-read: %d identities", len(self._entries))
        self._warn()

    def _broken(self, now: float, problem: str) -> None:
        """Say (ERROR) why the file cannot be used: at once when that changes, then every minute."""
        if problem != self.problem or now - self._problem_logged >= ERROR_REPEAT_SECONDS:
            log.error("the tokens file %s cannot be used: %s", self.path, problem)
            self._problem_logged = now
        self.problem = problem
        tokens_file_valid().set(0)

    def _warn(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            log.warning("the tokens file %s may be read by its group or others (mode %o): make it 0600 or 0400, "
                        "unless that group is this service's alone (a Kubernetes Secret volume read through "
                        "fsGroup)", self.path, mode & 0o777)
        if self._transport_warning:
            log.warning("%s", self._transport_warning)


def _version_of(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# The sections a tokens document may have (others may be added: a JWT source's subjects).
SECTIONS = frozenset({"tokens"})


def parse_tokens(document) -> list[tuple[bytes, Identity]]:
    """The (SHA-256 digest, identity) entries of a tokens document; ValueError naming the entry that is
    wrong. Strict: each entry names its task hubs (``["*"]`` for all) and has a role that exists, a
    hash (not that of the empty token); no two entries share a hash or a name."""
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
        raise ValueError('expected {"tokens": [...]}')
    unknown = sorted(set(document) - SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(map(repr, unknown))} (expected {', '.join(sorted(SECTIONS))})")
    entries: list[tuple[bytes, Identity]] = []
    digests: dict[bytes, str] = {}
    names: dict[str, str] = {}
    for n, entry in enumerate(document["tokens"]):
        where = f"tokens[{n}]"
        digest, identity = parse_token_entry(where, entry)
        where = f"{where} ({identity.name!r})"
        if digest in digests:
            raise ValueError(f"{where}: the same sha256 as {digests[digest]}: each token stands for one identity")
        if identity.name in names:
            raise ValueError(f"{where}: the same name as {names[identity.name]}")
        digests[digest], names[identity.name] = where, where
        entries.append((digest, identity))
    return entries


ENTRY_KEYS = frozenset({"name", "sha256", "role", "hubs"})


def parse_token_entry(where: str, entry) -> tuple[bytes, Identity]:
    """One entry of the ``tokens`` section: (SHA-256 digest, identity); ValueError naming it."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    name = entry.get("name", where)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name must be a non-empty string")
    where = f"{where} ({name!r})" if "name" in entry else where
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (expected {', '.join(sorted(ENTRY_KEYS))})")
    digest, role = entry.get("sha256"), entry.get("role")
    if not isinstance(digest, str) or not digest:
        raise ValueError(f"{where}: no sha256: give the 64 hex digits of the token's SHA-256 "
                         "(dt-scheduler hash-token)")
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{where}: sha256 must be the 64 hex digits of the token's SHA-256 (dt-scheduler hash-token)")
    if raw == EMPTY_TOKEN_DIGEST:
        raise ValueError(f"{where}: sha256 is the hash of the empty token, which is never accepted")
    if role not in ROLES:
        raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    if "hubs" not in entry:
        raise ValueError(f'{where}: no hubs: name the task hubs it may use, or ["*"] for every hub')
    hubs = entry["hubs"]
    if not isinstance(hubs, list) or not hubs or not all(isinstance(h, str) and (h == "*" or NAME_RE.match(h))
                                                          for h in hubs):
        raise ValueError(f'{where}: hubs must be a non-empty list of task hub names, or ["*"] for every hub')
    return raw, Identity(name, role, frozenset(hubs))


class Authenticator:
    """Identifies the caller of a call and checks what it may do; ends the long calls (work streams,
    waits) of callers that lose access when the identities change."""

    def __init__(self, tokens: TokenFile | None) -> None:
        self.tokens = tokens
        self._long_calls: set[_LongCall] = set()
        if tokens is not None:
            tokens.listeners.append(self.changed)

    def identify(self, metadata) -> Identity:
        """The caller's identity; Unauthenticated without a valid bearer token (when tokens are required)."""
        if self.tokens is None:
            return ANONYMOUS
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if header is None:
            raise Unauthenticated("this server requires a bearer token: send 'authorization: Bearer <token>' "
                                  "metadata")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:  # an empty token is never one, whatever the file holds
            raise Unauthenticated("the authorization metadata is not 'Bearer <token>'")
        identity = self.tokens.identify(token)
        if identity is None:
            raise Unauthenticated("the bearer token is not one this server knows")
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
        for held in list(self._long_calls):
            if held.revoked is not None:
                continue
            try:
                self.check(self.identify(held.metadata), held.method, held.hub)
            except (Unauthenticated, PermissionDenied) as exc:
                held.revoked = type(exc)(f"{exc} (the identities changed while {held.method} was open)")
                held.task.cancel()


class _LongCall:
    """A long call that :meth:`Authenticator.changed` re-checks: the credentials (metadata) it was made with."""

    __slots__ = ("metadata", "method", "hub", "task", "revoked")

    def __init__(self, metadata, method: str, hub: str | None, task: asyncio.Task) -> None:
        self.metadata = tuple(metadata)
        self.method = method
        self.hub = hub
        self.task = task
        self.revoked: Unauthenticated | PermissionDenied | None = None


def token_hub(request) -> str | None:
    """The task hub a completion token names (None if it names none: the call itself rejects it)."""
    token = getattr(request, "completionToken", "")
    hub, sep, _ = token.partition("|")
    return hub if sep else None

