"""Certificates for the TLS tests, made with the ``openssl`` command line (pytest puts tests/ on sys.path).

:func:`certs` (a session fixture) makes a CA, a server certificate for localhost and 127.0.0.1, a
client certificate signed by the CA, and a second CA with a client certificate of its own, which
a server that trusts only the first CA must refuse. :meth:`Certs.new_server_cert` makes more server
certificates of the first CA (a rotation).
"""
from __future__ import annotations

import pathlib
import secrets
import shutil
import subprocess
from dataclasses import dataclass

import pytest

_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_CSR_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
"""

_LEAF_EXTENSIONS = """\
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = {usage}
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


@dataclass(frozen=True)
class Pair:
    """A certificate (PEM file), its private key (PEM file) and its serial number."""

    cert: pathlib.Path
    key: pathlib.Path
    serial: int

    def cert_bytes(self) -> bytes:
        return self.cert.read_bytes()

    def key_bytes(self) -> bytes:
        return self.key.read_bytes()


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    result = subprocess.run([openssl, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


def _serial_of(cert: pathlib.Path) -> int:
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    out = subprocess.run([openssl, "x509", "-in", str(cert), "-noout", "-serial"], capture_output=True, text=True,
                         check=True).stdout.strip()
    return int(out.split("=", 1)[1], 16)


def make_ca(directory: pathlib.Path, name: str) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.cnf"
    config.write_text(_CA_CONFIG.format(cn=f"dt-scheduler test {name}"))
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "3", "-config", str(config))
    return Pair(cert, key, _serial_of(cert))


def make_leaf(directory: pathlib.Path, name: str, ca: Pair, *, server: bool) -> Pair:
    """A certificate signed by ``ca``: for a server (localhost, 127.0.0.1) or for a client."""
    directory.mkdir(parents=True, exist_ok=True)
    csr_config, extensions = directory / f"{name}-csr.cnf", directory / f"{name}-ext.cnf"
    csr_config.write_text(_CSR_CONFIG.format(cn="localhost" if server else name))
    extensions.write_text(_LEAF_EXTENSIONS.format(
        usage="serverAuth,clientAuth" if server else "clientAuth",
        san="DNS:localhost,IP:127.0.0.1" if server else f"DNS:{name}"))
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    serial = secrets.randbits(62) | (1 << 62)  # positive, 63 bits, unique for a rotation to be seen
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-config", str(csr_config))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-set_serial", str(serial),
             "-days", "3", "-out", str(cert), "-extfile", str(extensions), "-extensions", "leaf")
    assert _serial_of(cert) == serial
    return Pair(cert, key, serial)


@dataclass(frozen=True)
class Certs:
    directory: pathlib.Path
    ca: Pair
    server: Pair  # localhost and 127.0.0.1, signed by ca
    client: Pair  # signed by ca
    other_ca: Pair
    other_client: Pair  # signed by other_ca: a server trusting only ca refuses it

    def new_server_cert(self, name: str) -> Pair:
        """Another server certificate of ``ca`` (a new key and serial)."""
        return make_leaf(self.directory / "more", f"{name}-{secrets.token_hex(4)}", self.ca, server=True)


def make_certs(directory: pathlib.Path) -> Certs:
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    return Certs(directory, ca, make_leaf(directory, "server", ca, server=True),
                 make_leaf(directory, "client", ca, server=False), other_ca,
                 make_leaf(directory, "other-client", other_ca, server=False))


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))
