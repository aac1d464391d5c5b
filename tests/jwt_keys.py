"""Signing keys and JWTs for the workload identity tests (pytest puts tests/ on sys.path).

:class:`SigningKey` is an RSA or EC key pair made with ``cryptography``, with its public half as a
JWK; :func:`jwks` makes a JWKS document of some of them, as ``kubectl get --raw /openid/v1/jwks``
prints one; :meth:`SigningKey.token` signs a ServiceAccount-like token with claims that verify
unless a test overrides them.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "dt-scheduler"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass
class SigningKey:
    alg: str  # RS256 or ES256
    kid: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    def __post_init__(self) -> None:
        if self.alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = jwt.algorithms.RSAAlgorithm
        elif self.alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = jwt.algorithms.ECAlgorithm
        else:
            raise ValueError(self.alg)

    def jwk(self) -> dict:
        """The public key as the API server publishes it."""
        return {**json.loads(self.algorithm.to_jwk(self.private.public_key())), "kid": self.kid, "use": "sig",
                "alg": self.alg}

    def token(self, sub: str, /, *, kid: str | None = None, alg: str | None = None, **overrides) -> str:
        """A token for ``sub``, valid for an hour from now; ``overrides`` replace claims (None drops one)."""
        now = int(time.time())
        claims = {"aud": [AUDIENCE], "iss": ISSUER, "sub": sub, "iat": now, "nbf": now, "exp": now + 3600,
                  "kubernetes.io": {"namespace": sub.split(":")[2] if sub.count(":") == 3 else "x"}}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers={"kid": kid or self.kid})


def jwks(*keys: SigningKey) -> dict:
    return {"keys": [k.jwk() for k in keys]}


def write_jwks(path, *keys: SigningKey) -> None:
    """Replace the JWKS file as a ConfigMap update does: a new file renamed over the old one."""
    tmp = f"{path}.new"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jwks(*keys), f)
    os.replace(tmp, path)


def b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict, claims: dict, signature: bytes = b"sig") -> str:
    """A token with any header (alg none, HS256, ...) and any signature bytes."""
    return f"{b64(header)}.{b64(claims)}.{b64(signature)}"
