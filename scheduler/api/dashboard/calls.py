"""The dashboard's way into the service: the gRPC calls themselves, without the network.

Every JSON endpoint that reads or changes instances and entities makes the same call a gRPC client
would: the servicer's handler wrapped by the same :class:`~scheduler.api.interceptors.CallInterceptor`
(identity, role, task hub, audit line, metrics), with the bearer token and the task hub the browser
sent as its metadata. So the dashboard can do nothing, and read nothing, that its token could not do
through the gRPC API; bounds (page sizes, work per query page) and validation are the same too.
What has no RPC (a hub's depths, the list of hubs) is checked here with the same authenticator, as
the read it is (``QueryInstances``).
"""
from __future__ import annotations

import grpc

from ..auth import Authenticator, PermissionDenied, Unauthenticated
from ..interceptors import CallInterceptor
from ..roles import ROLES, Identity
from ..servicer import SERVICE, TASK_HUB_METADATA_KEY, Servicer

# How a gRPC status reads in HTTP.
HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class CallFailed(Exception):
    """A call ended with a status other than OK: its code and message (what a gRPC client would see)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


class _Aborted(grpc.aio.AbortError):
    """What ``abort`` raises (an AbortError: the handlers let it through as grpc's own)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Enough(grpc.aio.AbortError):
    """A streaming call was given all the dashboard shows: it ends there."""


class _Context:
    """The part of ``grpc.aio.ServicerContext`` that the handlers and the interceptor use."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str, keep: int | None = None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self.written: list = []
        self._keep = keep  # streamed messages to keep; the stream ends after them

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def code(self):
        return self._code

    def time_remaining(self):
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        self._code = code
        raise _Aborted(code, details)

    async def write(self, message) -> None:
        self.written.append(message)
        if self._keep is not None and len(self.written) >= self._keep:
            raise _Enough("the dashboard has what it shows")


class Calls:
    """Makes the service's calls for the dashboard, as a gRPC client with the browser's token would."""

    def __init__(self, servicer: Servicer, interceptor: CallInterceptor) -> None:
        self.servicer = servicer
        self.authenticator: Authenticator = interceptor.authenticator
        self.default_hub = interceptor.default_hub
        self._handlers = {m.name: interceptor.wrap(m.name, getattr(servicer, m.name)) for m in SERVICE.methods}

    def stored_hub(self, hub: str) -> str:
        """The name the store knows task hub ``hub`` by, for these calls (a Dapr twin's for the Dapr servicer)."""
        return hub + self.servicer.flavour_suffix

    @property
    def authenticates(self) -> bool:
        return self.authenticator.tokens is not None

    @staticmethod
    def metadata(authorization: str | None, hub: str | None) -> tuple[tuple[str, str], ...]:
        pairs = []
        if authorization is not None:
            pairs.append(("authorization", authorization))
        if hub:
            pairs.append((TASK_HUB_METADATA_KEY, hub))
        return tuple(pairs)

    async def unary(self, method: str, request, metadata, peer: str):
        """The reply of ``method``; CallFailed with the status a gRPC client would get."""
        context = _Context(metadata, peer)
        try:
            return await self._handlers[method](request, context)
        except _Aborted as exc:
            raise CallFailed(exc.code, exc.message) from None

    async def stream(self, method: str, request, metadata, peer: str, keep: int) -> tuple[list, bool]:
        """The first ``keep`` messages a streaming call writes, and whether it had more."""
        context = _Context(metadata, peer, keep)
        try:
            await self._handlers[method](request, context)
        except _Aborted as exc:
            raise CallFailed(exc.code, exc.message) from None
        except _Enough:
            return context.written, True
        return context.written, False

    def identify(self, metadata) -> Identity:
        """Who the metadata's token is (CallFailed UNAUTHENTICATED / PERMISSION_DENIED as a call would)."""
        try:
            return self.authenticator.identify(metadata)
        except Unauthenticated as exc:
            raise CallFailed(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        except PermissionDenied as exc:
            raise CallFailed(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None

    def check_read(self, metadata, hub: str) -> Identity:
        """The caller's identity, if it may read task hub ``hub`` (as ``QueryInstances`` there)."""
        identity = self.identify(metadata)
        try:
            self.authenticator.check(identity, "QueryInstances", hub)
        except PermissionDenied as exc:
            raise CallFailed(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        return identity


def allowed_methods(identity: Identity) -> list[str]:
    """The calls of the service the identity's role allows (the dashboard shows the actions among them)."""
    return sorted(ROLES[identity.role])
