"""Transport security: the server's certificate files, re-read when they change (for the gRPC port
and, as an ``ssl.SSLContext``, for the dashboard).

cert-manager (and Kubernetes Secrets in general) rotate certificate files in place; grpc asks
for the configuration at each new handshake, and gets a new one once a file's content changed.
With a client CA, clients must present a certificate it signed (mutual TLS).
"""
from __future__ import annotations

import logging
import os
import ssl

import grpc

log = logging.getLogger(__name__)


class ServerCertificates:
    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None) -> None:
        self.files = [f for f in (cert_file, key_file, client_ca_file) if f is not None]
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self._seen = self._versions()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._configuration(), self._fetch,
                                                   require_client_authentication=self.client_ca_file is not None)

    def _versions(self) -> list[tuple]:
        versions = []
        for path in self.files:
            st = os.stat(path)  # follows the symlinks a mounted Secret swaps
            versions.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return versions

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        root = read(self.client_ca_file) if self.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([(read(self.key_file), read(self.cert_file))],
                                                         root_certificates=root)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc at each handshake: a new configuration when a file changed, else None."""
        try:
            versions = self._versions()
            if versions == self._seen:
                return None
            configuration = self._configuration()
        except (OSError, ValueError) as exc:  # a rotation half done: keep serving the certificate we have
            log.warning("TLS certificate files could not be re-read (%s); keeping the current ones", exc)
            return None
        self._seen = versions
        log.info("TLS certificate files changed: new connections use them")
        return configuration

    def ssl_context(self) -> ssl.SSLContext:
        """The same certificates for an HTTPS server (the dashboard); :meth:`refresh_ssl` keeps it current."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load_ssl(context)
        self._ssl_seen = self._versions()
        return context

    def refresh_ssl(self, context: ssl.SSLContext) -> None:
        """Load the files into ``context`` again if they changed since it last loaded them."""
        try:
            versions = self._versions()
            if versions == self._ssl_seen:
                return
            self._load_ssl(context)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS certificate files could not be re-read for the dashboard (%s); keeping the current "
                        "ones", exc)
            return
        self._ssl_seen = versions
        log.info("TLS certificate files changed: new dashboard connections use them")

    def _load_ssl(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.client_ca_file)
