"""What every call of the TaskHubSidecarService goes through, in one server interceptor: who calls
and whether it may (api/auth.py), the task hub and instance it is about (for the logs), a log line
with the caller for every destructive call, and its count and duration by status code (metrics).
Health and reflection are left open for probes."""
from __future__ import annotations

import logging
import time

import grpc
import prometheus_client

from .. import logs
from .auth import TOKEN_HUB_CALLS, Authenticator, PermissionDenied, Unauthenticated, token_hub

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/TaskHubSidecarService/"
DESTRUCTIVE = frozenset({"DeleteTaskHub", "CreateTaskHub", "PurgeInstances", "TerminateInstance",
                         "CleanEntityStorage", "RestartInstance", "RewindInstance"})
TASK_HUB_METADATA_KEY = "taskhub"

REQUESTS = prometheus_client.Counter("dt_rpc_requests_total", "Calls by method and status code", ["method", "code"])
DURATION = prometheus_client.Histogram(
    "dt_rpc_duration_seconds", "Call duration by method (a stream: how long it was open)", ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600))


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, default_hub: str, count: bool = True) -> None:
        """``count``: keep the per-call metrics (only worth it when they are served)."""
        self.authenticator = authenticator
        self.default_hub = default_hub
        self.count = count

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        method = details.method[len(SERVICE_PREFIX):]
        metadata = tuple(details.invocation_metadata or ())
        streaming = handler.unary_stream is not None
        inner = handler.unary_stream if streaming else handler.unary_unary

        async def behavior(request, context):
            started = time.perf_counter()
            hub = token_hub(request) if method in TOKEN_HUB_CALLS else \
                next((v for k, v in metadata if k == TASK_HUB_METADATA_KEY), self.default_hub)
            logs.hub.set(hub)
            logs.instance.set(getattr(request, "instanceId", None) or None)
            try:
                try:
                    identity = self.authenticator.identify(metadata)
                    self.authenticator.check(identity, method, hub)
                except Unauthenticated as exc:
                    log.info("%s refused: UNAUTHENTICATED %s (peer %s)", method, exc, context.peer())
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
                except PermissionDenied as exc:
                    log.info("%s refused: PERMISSION_DENIED %s", method, exc)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                if method in DESTRUCTIVE:
                    log.info("%s on task hub %r by %s (role %s, peer %s)", method, hub, identity.name, identity.role,
                             context.peer())
                return await inner(request, context)
            finally:
                if self.count:
                    code = context.code()
                    REQUESTS.labels(method, "OK" if code is None else code.name).inc()
                    DURATION.labels(method).observe(time.perf_counter() - started)

        make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        return make(behavior, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
