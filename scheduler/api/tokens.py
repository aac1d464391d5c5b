"""The tokens file (``--auth-tokens-file``): SHA-256 hashes of bearer tokens and the identities they stand
for, and the subjects of workloads' JWTs; strict, watched, re-read when it changes (see :class:`TokenFile`)."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable

import prometheus_client

from ..config import NAME_RE
from .jwt_auth import parse_subjects
from .roles import ROLES, Identity

log = logging.getLogger(__name__)


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
        self._subjects: dict[str, Identity] = {}  # JWT subject -> identity (the "subjects" section)
        self.listeners: list[Callable[[], None]] = []
        self.problem: str | None = None  # why the file in use is not the file on disk (None: it is)
        self._problem_logged = float("-inf")
        try:
            self._version = _version_of(path)
            self._entries, self._subjects = self._read()
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

    def subject(self, subject: str) -> Identity | None:
        """The identity of a verified JWT's subject, or None if the file has no entry for it."""
        if self._clock() - self._checked >= LAZY_CHECK_SECONDS:
            self.refresh()
        return self._subjects.get(subject)

    @property
    def has_subjects(self) -> bool:
        return bool(self._subjects)

    def refresh(self) -> None:
        """Re-read the file if it changed (or went away); tell the listeners when the identities did."""
        now = self._checked = self._clock()
        before = (self._entries, self._subjects)
        try:
            version = _version_of(self.path)
            if version == self._version:
                if self.problem is not None:  # still the file that cannot be used: said again every minute
                    self._broken(now, self.problem)
                return
            self._version = version  # (a file that cannot be used is read again once it changes)
            self._entries, self._subjects = self._read()
            self._fixed()
        except FileNotFoundError:
            self._version = None
            if self._entries or self._subjects:
                self._entries, self._subjects = [], {}  # fail closed
            self._broken(now, "the file is gone: no token is valid until it is back")
        except (OSError, ValueError) as exc:
            self._broken(now, f"{_one_line(exc)}; the last good set of {len(self._entries)} identities stays in "
                              "use (a token removed meanwhile still works) until the file is fixed")
        finally:
            if self._entries is not before[0] or self._subjects is not before[1]:
                for listener in list(self.listeners):
                    listener()

    def _read(self) -> tuple[list[tuple[bytes, Identity]], dict[str, Identity]]:
        with open(self.path, "rb") as f:
            data = f.read()
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        entries = parse_tokens(document)
        subjects = {sub: Identity(*entry) for sub, entry in parse_subjects(document, ROLES).items()}
        return entries, subjects

    def _fixed(self) -> None:
        if self.problem is not None:
            log.warning("the tokens file %s is valid again", self.path)
        self.problem = None
        tokens_file_valid().set(1)
        log.info("tokens file re-read: %d identities, %d subjects", len(self._entries), len(self._subjects))
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
        if mode & 0o007:  # a group may be the service's own (a Secret volume read through fsGroup: 0440)
            log.warning("the tokens file %s may be read by others (mode %o): make it 0600, 0400 or, read through a "
                        "group of the service's own, 0440", self.path, mode & 0o777)
        if self._transport_warning:
            log.warning("%s", self._transport_warning)


def _version_of(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# The sections a tokens document may have: bearer tokens, and the subjects of workloads' JWTs (jwt_auth.py).
SECTIONS = frozenset({"tokens", "subjects"})


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
