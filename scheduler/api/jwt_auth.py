"""Workload identity: Kubernetes projected ServiceAccount tokens (JWTs) verified offline.

A pod mounts a projected ServiceAccount token with an audience of this service and sends it as
``authorization: Bearer <jwt>``. The replicas verify it against the cluster's public keys, a JWKS
file (``--auth-jwks-file``, from ``kubectl get --raw /openid/v1/jwks``, mounted from a ConfigMap and
re-read when it changes), with no call to the API server: the signature (the key the token's ``kid``
names, with that key's algorithm: RS*, PS* or ES*, never ``none`` nor HS*), ``exp``, ``nbf`` and
``iat`` (30 s of leeway), the audience (``--auth-jwt-audience``) and the issuer
(``--auth-jwt-issuer``). Its subject (``sub``, ``system:serviceaccount:<namespace>:<name>``) is then
looked up in the ``subjects`` section of the tokens file::

    {"tokens": [...],
     "subjects": [{"name": "orders-workers", "subject": "system:serviceaccount:orders:worker",
                   "role": "worker", "hubs": ["orders"]}]}

An invalid token is UNAUTHENTICATED (the message says why, never what the token holds); a valid
token whose subject has no entry is PERMISSION_DENIED (the caller is known, it is not allowed).
A JWKS file that cannot be read once the service runs fails closed: every JWT is refused until it
can be read again.

This module knows JWTs and the shape of the ``subjects`` section, not roles: api/auth.py calls it
and turns its answers into identities, UNAUTHENTICATED and PERMISSION_DENIED.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

import jwt

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 30  # clock skew allowed on exp, nbf and iat
RECHECK_SECONDS = 1.0  # the JWKS file is looked at (stat) at most this often
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
_B64URL = r"[A-Za-z0-9_-]+"
JWT_SHAPE = re.compile(rf"^{_B64URL}\.{_B64URL}\.{_B64URL}$")  # header.payload.signature (JWS compact form)

# What a refusal says, by the PyJWT error (the most specific class first).
_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (audience)"),
    (jwt.InvalidIssuerError, "the token was not issued by the configured issuer"),
    (jwt.InvalidIssuedAtError, "the token's issue time (iat) is not a number"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim (exp, iat, iss, aud, sub)"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not the one of its key"),
    (jwt.DecodeError, "the token is malformed"),
]


class InvalidJwt(Exception):
    """The token does not verify; the message says why without quoting the token."""


class Subject(NamedTuple):
    """An entry of the ``subjects`` section: who (``name``, for logs), its role and task hubs."""

    name: str
    role: str
    hubs: frozenset[str]


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated base64url parts: a JWT (a static token is hex or any other text)."""
    return bool(JWT_SHAPE.match(token))


def parse_subjects(document, roles: Collection[str]) -> dict[str, Subject]:
    """The entries of the ``subjects`` section of a tokens document, by subject (none without the
    section); ValueError saying what is wrong. ``roles``: the role names there are."""
    section = document.get("subjects", []) if isinstance(document, dict) else []
    if not isinstance(section, list):
        raise ValueError('"subjects" must be a list of {"name", "subject", "role", "hubs"}')
    subjects: dict[str, Subject] = {}
    names: set[str] = set()
    for n, entry in enumerate(section):
        where = f"subjects[{n}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object")
        name, subject, role, hubs = entry.get("name"), entry.get("subject"), entry.get("role"), entry.get("hubs")
        if not isinstance(subject, str) or not subject.strip() or subject != subject.strip():
            raise ValueError(f"{where}.subject must be the token's sub, e.g. system:serviceaccount:<namespace>:<name>")
        if name is None:
            name = subject
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name must be a non-empty string")
        if role not in roles:
            raise ValueError(f"{where}.role must be one of {', '.join(roles)}")
        if not isinstance(hubs, list) or not hubs or not all(isinstance(h, str) and h for h in hubs):
            raise ValueError(f'{where}.hubs must be a non-empty list of task hub names (or ["*"])')
        if subject in subjects:
            raise ValueError(f"{where}.subject {subject!r} is already the subject of {subjects[subject].name!r}")
        if name in names:
            raise ValueError(f"{where}.name {name!r} is already the name of another subject")
        names.add(name)
        subjects[subject] = Subject(name, role, frozenset(hubs))
    return subjects


def parse_jwks(document) -> dict[str, jwt.PyJWK]:
    """The verification keys of a JWKS document by ``kid``; ValueError saying what is wrong.

    Only public asymmetric keys for signing are taken: a symmetric (``oct``) key, a private key or a
    key of another algorithm is an error, not something to skip, so a wrong file is noticed."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JWKS: {"keys": [...]}')
    keys: dict[str, jwt.PyJWK] = {}
    for n, entry in enumerate(document["keys"]):
        where = f"keys[{n}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where} has no kid")
        if entry.get("use", "sig") != "sig":
            raise ValueError(f"{where} (kid {kid}) is not a signing key (use {entry.get('use')!r})")
        if entry.get("kty") not in ("RSA", "EC"):
            raise ValueError(f"{where} (kid {kid}): key type {entry.get('kty')!r} is not RSA or EC")
        if "d" in entry:
            raise ValueError(f"{where} (kid {kid}) is a private key: give the public keys only")
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{where} (kid {kid}) is not a usable key: {exc}") from None
        if key.algorithm_name not in ALGORITHMS:
            raise ValueError(f"{where} (kid {kid}): algorithm {key.algorithm_name} is not one of "
                             f"{', '.join(sorted(ALGORITHMS))}")
        if kid in keys:
            raise ValueError(f"{where}: kid {kid} appears twice")
        keys[kid] = key
    if not keys:
        raise ValueError("the JWKS has no keys")
    return keys


class JwksFile:
    """The keys of a JWKS file, re-read when the file changes (looked at at most once a second).

    The file must be readable at start (ValueError naming the flag). Later, a file that is gone or
    cannot be parsed leaves no keys: every JWT is refused until the file is good again."""

    def __init__(self, path: str, clock=None) -> None:
        self.path = path
        self._clock = clock or time.monotonic
        self._version: tuple | None = None
        self._checked = float("-inf")
        self._keys: dict[str, jwt.PyJWK] = {}
        self._problem: str | None = None
        self.listeners: list[Callable[[], None]] = []  # told when the keys change (long calls are checked again)
        self._reload(force=True)

    def refresh(self) -> None:
        """Re-read the file now if it changed (the replica's housekeeping calls this)."""
        self._reload()

    def key(self, kid: str) -> jwt.PyJWK | None:
        if self._clock() - self._checked >= RECHECK_SECONDS:
            self._reload()
        return self._keys.get(kid)

    @property
    def problem(self) -> str | None:
        """Why there are no keys (the file could not be re-read), or None."""
        return self._problem

    def _reload(self, force: bool = False) -> None:
        self._checked = self._clock()
        try:
            st = os.stat(self.path)
            version = (st.st_ino, st.st_mtime_ns, st.st_size)
            if version == self._version and not force:
                return
            with open(self.path, encoding="utf-8") as f:
                keys = parse_jwks(json.load(f))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if force:
                raise ValueError(f"--auth-jwks-file {self.path}: {reason}") from None
            if self._problem is None:
                log.error("the JWKS file %s could not be re-read (%s); every JWT is refused until it can",
                          self.path, reason)
            had_keys = bool(self._keys)
            self._version, self._keys, self._problem = None, {}, reason
            if had_keys:
                self._tell()
            return
        self._version, self._keys, self._problem = version, keys, None
        if not force:
            log.info("JWKS file re-read: %d keys (%s)", len(keys), ", ".join(sorted(keys)))
            self._tell()

    def _tell(self) -> None:
        for listener in list(self.listeners):
            listener()


class JwtVerifier:
    """Verifies JWTs against the keys of a JWKS file, for one audience and one issuer."""

    def __init__(self, jwks: JwksFile, audience: str, issuer: str) -> None:
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer

    def claims(self, token: str) -> dict:
        """The claims of a token that verifies; InvalidJwt saying why it does not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidJwt("the bearer token is not a valid JWT: its header is malformed") from None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not kid:
            raise InvalidJwt("the bearer token is not a valid JWT: its header names no key (kid)")
        key = self.jwks.key(kid)
        if key is None:
            if self.jwks.problem:
                raise InvalidJwt("JWTs cannot be verified now: the server's JWKS file cannot be read")
            raise InvalidJwt("the bearer token is not a valid JWT: it is signed with a key (kid) the JWKS "
                                  "does not have")
        if alg != key.algorithm_name:  # also refuses "none" and HS*: keys are RS*, PS* or ES* only
            raise InvalidJwt("the bearer token is not a valid JWT: its algorithm is not the one of its key")
        try:
            return jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=self.audience,
                              issuer=self.issuer, leeway=LEEWAY_SECONDS,
                              options={"require": REQUIRED_CLAIMS, "verify_signature": True})
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token does not verify")
            raise InvalidJwt(f"the bearer token is not a valid JWT: {reason}") from None

    @staticmethod
    def ends_at(token: str) -> float | None:
        """When a token that verified stops verifying (its ``exp`` plus the leeway, epoch seconds)."""
        try:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            return None
        return float(exp) + LEEWAY_SECONDS if isinstance(exp, (int, float)) else None

    def subject(self, token: str) -> str:
        """The subject (``sub``) of a token that verifies; InvalidJwt saying why it does not."""
        subject = self.claims(token).get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidJwt("the bearer token is not a valid JWT: its subject (sub) is empty")
        return subject
