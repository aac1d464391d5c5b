"""Workload identity without a server: the subjects section, the JWKS file, what a JWT must be to
verify, how bearer tokens are routed, and the flags."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from jwt_keys import AUDIENCE, ISSUER, SigningKey, b64, forged, jwks, subject, write_jwks
from scheduler import config as cfg
from scheduler.api.auth import Authenticator, PermissionDenied, Unauthenticated
from scheduler.api.roles import ROLES, Identity
from scheduler.api.tokens import TokenFile
from scheduler.api.jwt_auth import (LEEWAY_SECONDS, InvalidJwt, JwksFile, JwtVerifier, Subject, looks_like_jwt,
                                    parse_jwks, parse_subjects)
from scheduler.config import Config

WORKER = subject("orders", "worker")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def verifier(tmp_path, rsa_key, ec_key) -> JwtVerifier:
    path = tmp_path / "jwks.json"
    write_jwks(path, rsa_key, ec_key)
    return JwtVerifier(JwksFile(str(path)), AUDIENCE, ISSUER)


# -- the subjects section ------------------------------------------------------------------

def entry(**fields) -> dict:
    return {"name": "orders-workers", "subject": WORKER, "role": "worker", "hubs": ["orders"], **fields}


def test_subjects_map_to_name_role_and_hubs():
    doc = {"tokens": [], "subjects": [entry(), {"subject": subject("ops", "admin"), "role": "admin", "hubs": ["*"]}]}
    assert parse_subjects(doc, ROLES) == {
        WORKER: Subject("orders-workers", "worker", frozenset({"orders"})),
        subject("ops", "admin"): Subject(subject("ops", "admin"), "admin", frozenset({"*"})),  # name: the subject
    }
    assert parse_subjects({"tokens": []}, ROLES) == {}


@pytest.mark.parametrize("subjects, says", [
    ({"a": 1}, "must be a list"),
    (["x"], r"subjects\[0\] is not an object"),
    ([entry(hubs=None)], r"subjects\[0\]\.hubs"),
    ([{k: v for k, v in entry().items() if k != "hubs"}], r"subjects\[0\]\.hubs"),
    ([entry(hubs=[])], r"subjects\[0\]\.hubs"),
    ([entry(hubs=[""])], r"subjects\[0\]\.hubs"),
    ([entry(hubs="orders")], r"subjects\[0\]\.hubs"),
    ([entry(role="owner")], r"subjects\[0\]\.role must be one of reader, client, worker, admin"),
    ([entry(subject="")], r"subjects\[0\]\.subject"),
    ([entry(subject=" " + WORKER)], r"subjects\[0\]\.subject"),
    ([entry(name="")], r"subjects\[0\]\.name"),
    ([entry(), entry(name="other")], r"subjects\[1\]\.subject .* already the subject of 'orders-workers'"),
    ([entry(), entry(subject=subject("orders", "other"))], r"subjects\[1\]\.name 'orders-workers' is already"),
])
def test_a_bad_subjects_section_is_refused_saying_where(subjects, says):
    with pytest.raises(ValueError, match=says):
        parse_subjects({"tokens": [], "subjects": subjects}, ROLES)


def test_the_tokens_file_refuses_a_bad_subjects_section(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [], "subjects": [entry(role="owner")]}))
    with pytest.raises(ValueError, match=r"--auth-tokens-file .*subjects\[0\]\.role"):
        TokenFile(str(path))


# -- the JWKS ------------------------------------------------------------------------------

def test_a_jwks_of_rsa_and_ec_keys_is_read_by_kid(rsa_key, ec_key):
    keys = parse_jwks(jwks(rsa_key, ec_key))
    assert {kid: k.algorithm_name for kid, k in keys.items()} == {rsa_key.kid: "RS256", ec_key.kid: "ES256"}
    no_alg = {k: v for k, v in ec_key.jwk().items() if k != "alg"}  # the algorithm follows from the curve
    assert parse_jwks({"keys": [no_alg]})[ec_key.kid].algorithm_name == "ES256"


def test_a_jwks_that_is_not_one_of_public_signing_keys_is_refused(rsa_key, ec_key):
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.private))
    cases = {
        "not a JWKS": ([], "expected a JWKS"),
        "no keys": ({"keys": []}, "no keys"),
        "no kid": ({"keys": [{k: v for k, v in rsa_key.jwk().items() if k != "kid"}]}, "has no kid"),
        "a symmetric key": ({"keys": [{"kty": "oct", "kid": "h", "k": b64(b"secret" * 6)}]}, "'oct' is not RSA or EC"),
        "a private key": ({"keys": [{**private, "kid": "p"}]}, "is a private key"),
        "an encryption key": ({"keys": [{**rsa_key.jwk(), "use": "enc"}]}, "not a signing key"),
        "an algorithm not for signatures": ({"keys": [{**rsa_key.jwk(), "alg": "HS256"}]}, "not a usable key|algorithm"),
        "a kid twice": (jwks(rsa_key, rsa_key), "appears twice"),
        "a broken key": ({"keys": [{**ec_key.jwk(), "x": "AAAA"}]}, "not a usable key"),
    }
    for name, (document, says) in cases.items():
        with pytest.raises(ValueError, match=says):
            parse_jwks(document)


def test_the_jwks_file_must_be_readable_at_start(tmp_path):
    with pytest.raises(ValueError, match="--auth-jwks-file .*missing.json"):
        JwksFile(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="--auth-jwks-file"):
        JwksFile(str(tmp_path / "bad.json"))


def test_the_jwks_file_is_re_read_when_it_changes_and_fails_closed_when_it_goes(tmp_path, rsa_key, ec_key):
    path, clock = tmp_path / "jwks.json", Clock()
    write_jwks(path, rsa_key)
    keys = JwksFile(str(path), clock=clock)
    assert keys.key(rsa_key.kid) is not None and keys.key(ec_key.kid) is None
    write_jwks(path, ec_key)
    assert keys.key(ec_key.kid) is None  # looked at once a second at most
    clock.now += 1.0
    assert keys.key(ec_key.kid) is not None and keys.key(rsa_key.kid) is None
    path.unlink()
    clock.now += 1.0
    assert keys.key(ec_key.kid) is None and "No such file" in keys.problem
    path.write_text("{not json")
    clock.now += 1.0
    assert keys.key(ec_key.kid) is None and keys.problem
    write_jwks(path, ec_key)
    clock.now += 1.0
    assert keys.key(ec_key.kid) is not None and keys.problem is None


# -- verification --------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_token_of_the_cluster_verifies_and_names_its_subject(verifier, rsa_key, ec_key, alg):
    key = rsa_key if alg == "RS256" else ec_key
    assert verifier.subject(key.token(WORKER)) == WORKER
    assert verifier.subject(key.token(WORKER, aud=[AUDIENCE, "other"])) == WORKER
    assert verifier.subject(key.token(WORKER, aud=AUDIENCE, nbf=None)) == WORKER  # a single aud; no nbf


def test_the_leeway_is_small(verifier, rsa_key):
    now = int(time.time())
    assert verifier.subject(rsa_key.token(WORKER, exp=now - LEEWAY_SECONDS // 2)) == WORKER
    assert verifier.subject(rsa_key.token(WORKER, iat=now + LEEWAY_SECONDS // 2, nbf=now + LEEWAY_SECONDS // 2))
    assert LEEWAY_SECONDS <= 60


def refusals(rsa_key: SigningKey, ec_key: SigningKey) -> dict[str, tuple[str, str]]:
    """name -> (token, what the refusal says)."""
    now = int(time.time())
    other = SigningKey("RS256", kid=rsa_key.kid)  # the same kid, another key
    claims = {"aud": [AUDIENCE], "iss": ISSUER, "sub": WORKER, "iat": now, "exp": now + 600}
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = {"alg": "HS256", "kid": rsa_key.kid, "typ": "JWT"}
    hs_signing_input = f"{b64(hs_header)}.{b64(claims)}".encode()
    hs256 = f"{hs_signing_input.decode()}.{b64(hmac.new(public_pem, hs_signing_input, hashlib.sha256).digest())}"
    return {
        "wrong audience": (rsa_key.token(WORKER, aud=["api"]), "audience"),
        "no audience": (rsa_key.token(WORKER, aud=None), "lacks a required claim"),
        "wrong issuer": (rsa_key.token(WORKER, iss="https://evil.example"), "issuer"),
        "expired": (rsa_key.token(WORKER, iat=now - 7200, nbf=now - 7200, exp=now - LEEWAY_SECONDS - 5), "expired"),
        "no expiry": (rsa_key.token(WORKER, exp=None), "lacks a required claim"),
        "not yet valid": (ec_key.token(WORKER, nbf=now + 600), "not valid yet"),
        "issued in the future": (ec_key.token(WORKER, iat=now + 600), "not valid yet"),
        "no subject": (ec_key.token(WORKER, sub=None), "lacks a required claim"),
        "bad signature": (other.token(WORKER), "signature does not verify"),
        "payload changed": (tamper(rsa_key.token(WORKER)), "signature does not verify"),
        "alg none": (forged({"alg": "none", "kid": rsa_key.kid}, claims, b"x"), "algorithm"),
        "HS256 with the public key as secret": (hs256, "algorithm"),
        "another algorithm of the key's type": (rsa_key.token(WORKER, alg="PS256"), "algorithm"),
        "unknown kid": (rsa_key.token(WORKER, kid="unknown"), "key \\(kid\\) the JWKS does not have"),
        "no kid": (forged({"alg": "RS256"}, claims), "names no key"),
        "header not JSON": (f"{b64(b'garbage')}.{b64(claims)}.{b64(b'sig')}", "malformed"),
    }


def tamper(token: str) -> str:
    header, _, signature = token.split(".")
    now = int(time.time())
    claims = {"aud": [AUDIENCE], "iss": ISSUER, "sub": subject("ops", "admin"), "iat": now, "exp": now + 600}
    return f"{header}.{b64(claims)}.{signature}"


def test_a_token_that_does_not_verify_is_refused_saying_why_without_quoting_it(verifier, rsa_key, ec_key):
    for name, (token, says) in refusals(rsa_key, ec_key).items():
        assert looks_like_jwt(token), name
        with pytest.raises(InvalidJwt, match=says) as refused:
            verifier.subject(token)
        message = str(refused.value)
        assert not any(part in message for part in token.split(".")), (name, message)
        assert WORKER not in message, (name, message)


def test_only_three_base64url_parts_look_like_a_jwt(rsa_key):
    assert looks_like_jwt(rsa_key.token(WORKER))
    for token in ("0" * 64, "a.b", "a.b.", ".b.c", "a.b.c.d", "a.b=.c", "a b.c.d", "dev-only-worker-token", ""):
        assert not looks_like_jwt(token), token


# -- routing in the authenticator ----------------------------------------------------------

def test_jwts_go_to_the_verifier_and_other_tokens_to_the_hashes(tmp_path, verifier, rsa_key):
    static = "static-" + "ab" * 16
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({
        "tokens": [{"name": "api", "sha256": hashlib.sha256(static.encode()).hexdigest(), "role": "client",
                    "hubs": ["orders"]}],
        "subjects": [entry()]}))
    tokens = TokenFile(str(path))
    with_jwt, without_jwt = Authenticator(tokens, verifier), Authenticator(tokens)

    def bearer(token: str) -> tuple:
        return (("authorization", f"Bearer {token}"),)

    assert with_jwt.identify(bearer(static)) == Identity("api", "client", frozenset({"orders"}))
    assert with_jwt.identify(bearer(rsa_key.token(WORKER))) == Identity("orders-workers", "worker",
                                                                         frozenset({"orders"}))
    with pytest.raises(PermissionDenied, match="system:serviceaccount:orders:other has no entry"):
        with_jwt.identify(bearer(rsa_key.token(subject("orders", "other"))))
    with pytest.raises(Unauthenticated, match="expired"):
        with_jwt.identify(bearer(rsa_key.token(WORKER, exp=int(time.time()) - 600)))
    # Without a JWKS, a JWT is only a token the file does not know.
    with pytest.raises(Unauthenticated, match="not one this server knows"):
        without_jwt.identify(bearer(rsa_key.token(WORKER)))


def workers_authenticator(tmp_path, verifier) -> Authenticator:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [], "subjects": [entry()]}))
    return Authenticator(TokenFile(str(path)), verifier)


async def open_stream(authenticator: Authenticator, token: str):
    """A long call (a work stream) made with ``token``, waiting until it is ended; and its task."""
    metadata = (("authorization", f"Bearer {token}"),)
    authenticator.check(authenticator.identify(metadata), "GetWorkItems", "orders")
    task = asyncio.create_task(authenticator.revocable(asyncio.Event().wait(), metadata, "GetWorkItems",
                                                       "orders"))
    while authenticator.long_calls == 0:
        await asyncio.sleep(0)
    return task


async def test_a_stream_made_with_a_jwt_ends_when_its_key_leaves_the_jwks(tmp_path, verifier, rsa_key, ec_key):
    authenticator = workers_authenticator(tmp_path, verifier)
    by_rsa = await open_stream(authenticator, rsa_key.token(WORKER))
    by_ec = await open_stream(authenticator, ec_key.token(WORKER))
    path = verifier.jwks.path
    write_jwks(path, ec_key)  # the RSA key is rotated out
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new version even within one mtime tick
    verifier.jwks.refresh()
    with pytest.raises(Unauthenticated, match="does not have.*identities changed while GetWorkItems"):
        await asyncio.wait_for(by_rsa, 10)
    assert not by_ec.done(), "a stream whose key stays is left alone"
    by_ec.cancel()


async def test_a_stream_made_with_a_jwt_ends_when_the_jwt_expires(tmp_path, verifier, rsa_key):
    authenticator = workers_authenticator(tmp_path, verifier)
    exp = int(time.time()) + 60
    stream = await open_stream(authenticator, rsa_key.token(WORKER, exp=exp))
    later = await open_stream(authenticator, rsa_key.token(WORKER, exp=exp + 3600))
    authenticator.expire(now=exp)  # within the leeway: still valid
    await asyncio.sleep(0)
    assert not stream.done()
    authenticator.expire(now=exp + LEEWAY_SECONDS)
    with pytest.raises(Unauthenticated, match="it has expired \\(while GetWorkItems was open"):
        await asyncio.wait_for(stream, 10)
    assert not later.done()
    later.cancel()


# -- flags ---------------------------------------------------------------------------------

def parse(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.from_args(parser.parse_args(argv), environ or {})


@pytest.fixture
def files(tmp_path, rsa_key) -> tuple[str, str]:
    tokens, keys = tmp_path / "tokens.json", tmp_path / "jwks.json"
    tokens.write_text('{"tokens": []}')
    write_jwks(keys, rsa_key)
    return str(tokens), str(keys)


def test_the_jwt_flags_and_their_variables(files):
    tokens, keys = files
    c = parse(["--auth-tokens-file", tokens, "--auth-jwks-file", keys, "--auth-jwt-audience", AUDIENCE,
               "--auth-jwt-issuer", ISSUER])
    assert (c.auth_jwks_file, c.auth_jwt_audience, c.auth_jwt_issuer) == (keys, AUDIENCE, ISSUER)
    assert parse([], {"DT_AUTH_TOKENS_FILE": tokens, "DT_AUTH_JWKS_FILE": keys, "DT_AUTH_JWT_AUDIENCE": AUDIENCE,
                      "DT_AUTH_JWT_ISSUER": ISSUER}) == c


def test_the_jwks_file_needs_audience_issuer_and_the_tokens_file(files, tmp_path):
    tokens, keys = files
    full = {"auth_tokens_file": tokens, "auth_jwks_file": keys, "auth_jwt_audience": AUDIENCE,
            "auth_jwt_issuer": ISSUER}
    for missing, says in (("auth_jwt_audience", "--auth-jwt-audience"), ("auth_jwt_issuer", "--auth-jwt-issuer"),
                          ("auth_tokens_file", "--auth-tokens-file")):
        with pytest.raises(ValueError, match=f"--auth-jwks-file \\(DT_AUTH_JWKS_FILE\\) needs {says}"):
            Config(**{**full, missing: None})
    with pytest.raises(ValueError, match="--auth-jwt-audience"):
        Config(**{**full, "auth_jwt_audience": ""})
    with pytest.raises(ValueError, match="only apply with --auth-jwks-file"):
        Config(auth_tokens_file=tokens, auth_jwt_audience=AUDIENCE)
    with pytest.raises(ValueError, match="--auth-jwks-file \\(DT_AUTH_JWKS_FILE\\): no such file"):
        Config(**{**full, "auth_jwks_file": str(tmp_path / "missing.json")})
