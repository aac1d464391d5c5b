"""Who may call what: bearer tokens, roles and task hubs.

Callers send ``authorization: Bearer <token>`` metadata (the header the SDKs' managed backends
send beside ``taskhub``). The tokens file (``--auth-tokens-file``, mounted from a Secret and re-read
when it changes) holds no token, only its SHA-256 hash, with the identity it stands for::

    {"tokens": [
      {"name": "orders-api", "sha256": "<hex of sha256(token)>", "role": "client", "hubs": ["orders"]},
      {"name": "ops", "sha256": "<...>", "role": "admin", "hubs": ["*"]}
    ]}

A presented token is hashed and compared with every stored hash in constant time. Roles:
``reader`` (get, wait, query, list, history) is part of ``client`` (+ start, raise, suspend,
resume, terminate, restart, signal); ``worker`` (work items, completions, abandons); ``admin``
(everything, including task hub create and delete, purge, entity storage clean-up). No token:
UNAUTHENTICATED; a role or task hub the identity lacks: PERMISSION_DENIED. ``dt-scheduler
hash-token`` prints the hash of a token. With ``--auth-jwks-file``, a bearer token shaped as a JWT is
a workload's token instead, its subject looked up in the file's ``subjects`` (api/jwt_auth.py).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass

from .jwt_auth import InvalidJwt, JwtVerifier, looks_like_jwt, parse_subjects

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


class TokenFile:
    """The identities of the tokens file, re-read when the file changes (checked at most once a second)."""

    def __init__(self, path: str, clock=None) -> None:
        import time

        self.path = path
        self._clock = clock or time.monotonic
        self._version: tuple | None = None
        self._checked = float("-inf")
        self._entries: list[tuple[bytes, Identity]] = []
        self._subjects: dict[str, Identity] = {}  # JWT subject -> identity (the "subjects" section)
        self._reload(force=True)

    def identify(self, token: str) -> Identity | None:
        if self._clock() - self._checked >= 1.0:
            self._reload()
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for digest, identity in self._entries:  # every entry, so the time taken says nothing
            if hmac.compare_digest(presented, digest) and found is None:
                found = identity
        return found

    def subject(self, subject: str) -> Identity | None:
        """The identity of a verified JWT's subject, or None if the file has no entry for it."""
        if self._clock() - self._checked >= 1.0:
            self._reload()
        return self._subjects.get(subject)

    @property
    def has_subjects(self) -> bool:
        return bool(self._subjects)

    def _reload(self, force: bool = False) -> None:
        self._checked = self._clock()
        try:
            st = os.stat(self.path)
            version = (st.st_ino, st.st_mtime_ns, st.st_size)
            if version == self._version and not force:
                return
            with open(self.path, encoding="utf-8") as f:
                document = json.load(f)
            entries = parse_tokens(document)
            subjects = {sub: Identity(*entry) for sub, entry in parse_subjects(document, ROLES).items()}
        except (OSError, ValueError) as exc:
            if force:
                raise ValueError(f"--auth-tokens-file {self.path}: {exc}") from exc
            log.warning("the tokens file could not be re-read (%s); keeping the identities it had", exc)
            return
        self._version, self._entries, self._subjects = version, entries, subjects
        if not force:
            log.info("tokens file re-read: %d identities, %d subjects", len(entries), len(subjects))


def parse_tokens(document) -> list[tuple[bytes, Identity]]:
    """The (SHA-256 digest, identity) entries of a tokens document; ValueError saying what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
        raise ValueError('expected {"tokens": [...]}')
    entries = []
    for n, entry in enumerate(document["tokens"]):
        where = f"tokens[{n}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object")
        digest, role, hubs = entry.get("sha256"), entry.get("role"), entry.get("hubs", ["*"])
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError(f"{where}.sha256 must be the 64 hex digits of the token's SHA-256")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}")
        if not isinstance(hubs, list) or not hubs or not all(isinstance(h, str) for h in hubs):
            raise ValueError(f'{where}.hubs must be a list of task hub names (or ["*"])')
        entries.append((bytes.fromhex(digest), Identity(str(entry.get("name", where)), role, frozenset(hubs))))
    return entries


class Authenticator:
    """Identifies the caller of a call and checks what it may do."""

    def __init__(self, tokens: TokenFile | None, jwt: JwtVerifier | None = None) -> None:
        """``jwt``: verifies workloads' JWTs (their subjects are in ``tokens``); None: no JWTs."""
        self.tokens = tokens
        self.jwt = jwt

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
        if self.jwt is not None and scheme.lower() == "bearer" and looks_like_jwt(token):
            return self._identify_jwt(token)
        identity = self.tokens.identify(token) if scheme.lower() == "bearer" else None
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


def token_hub(request) -> str | None:
    """The task hub a completion token names (None if it names none: the call itself rejects it)."""
    token = getattr(request, "completionToken", "")
    hub, sep, _ = token.partition("|")
    return hub if sep else None

