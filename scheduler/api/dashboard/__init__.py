"""The web dashboard (``--dashboard-port``): task hubs, instances, one instance's history as a
timeline, entities and schedules, and the actions a token's role allows.

It is one more client of the service's own calls (calls.py): it reads and acts through the gRPC
handlers, with their authorization, validation and bounds, never around them. It listens on the
gRPC server's host, with its TLS certificates (re-read when they change) and its tokens. The pages
are a static shell and a small script shipped with the package (static/); the script asks the
JSON endpoints (views.py) with the token the user entered, kept in the tab's sessionStorage.
"""
from __future__ import annotations

import logging
import ssl

from aiohttp import web

from ...config import Config
from ...engine import Engine
from ..tls import ServerCertificates
from .calls import Calls
from .views import MAX_BODY_BYTES, Views

log = logging.getLogger(__name__)


class Dashboard:
    def __init__(self, calls: Calls, engine: Engine, config: Config,
                 certificates: ServerCertificates | None = None, dapr: Calls | None = None) -> None:
        """``dapr``: the calls of the Dapr port (its servicer and interceptor), for the Dapr twins' pages."""
        self.config = config
        self.certificates = certificates
        self.ssl: ssl.SSLContext | None = certificates.ssl_context() if certificates is not None else None
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.add_routes(Views(calls, engine, dapr).routes())
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Listen (on the gRPC host); returns the bound port. OSError when the port cannot be bound."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.dashboard_port, ssl_context=self.ssl,
                           reuse_port=self.config.process > 0 or None)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = self._runner.addresses[0][1]
        scheme = "https" if self.ssl is not None else "http"
        log.info("dashboard on %s://%s:%d/", scheme, self.config.host, self.port)
        return self.port

    def refresh_certificates(self) -> None:
        """Load the certificate files again if they changed (new connections use them)."""
        if self.certificates is not None and self.ssl is not None:
            self.certificates.refresh_ssl(self.ssl)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
