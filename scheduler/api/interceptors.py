"""What every call of the TaskHubSidecarService goes through: who calls and whether it may
(api/auth.py), the task hub and instance it is about (for the logs), one audit line for every
destructive call once its outcome is known (the caller's name, role and address, what it was about,
and OK or the status code), one line for every refusal (with the caller's address), and its count
and duration by status code (metrics). Tokens never appear in a line.
Health and reflection are left open for probes.

This is not a ``grpc.aio.ServerInterceptor``: grpc runs those as a chain of coroutines per call
(and builds a new handler per call) whatever they decide. :meth:`CallInterceptor.wrap` wraps each
handler of the service once, when it is registered (see servicer.add_to_server), with only the
steps the configuration needs: without tokens and metrics, a call that is not destructive only
names its hub and instance for JSON logs, and with text logs it is served as it comes.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
import prometheus_client

from .. import logs
from .auth import Authenticator, PermissionDenied, Unauthenticated, token_hub
from .roles import ANONYMOUS, LONG_CALLS, TOKEN_HUB_CALLS

log = logging.getLogger(__name__)

DESTRUCTIVE = frozenset({"DeleteTaskHub", "CreateTaskHub", "PurgeInstances", "TerminateInstance",
                         "CleanEntityStorage", "RestartInstance", "RewindInstance",
                         "SkipGracefulOrchestrationTerminations", "RerunWorkflowFromEvent"})
TASK_HUB_METADATA_KEY = "taskhub"

REQUESTS = prometheus_client.Counter("dt_rpc_requests_total", "Calls by method and status code", ["method", "code"])
DURATION = prometheus_client.Histogram(
    "dt_rpc_duration_seconds", "Call duration by method (a stream: how long it was open)", ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600))

Handler = Callable[..., Awaitable]

# What a destructive call's handler adds to its audit line (set in the task that serves the call).
_note: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_note", default=None)


def audit_note(text: str) -> None:
    """Add ``text`` to the audit line of the destructive call being served (e.g. that it wiped a hub)."""
    _note.set(text)


def _subject(method: str, request) -> str:
    """What a destructive call is about, from its request (caller-given strings quoted with repr)."""
    if request is None:
        return "an unparsable request"
    if method == "CreateTaskHub":
        return "recreateIfExists" if request.recreateIfExists else "create if missing"
    if method == "PurgeInstances":
        which = request.WhichOneof("request")
        if which == "instanceId":
            return f"instance {request.instanceId!r}" + (" recursive" if request.recursive else "")
        if which == "instanceBatch":
            return f"{len(request.instanceBatch.instanceIds)} instance(s) by id"
        return "instances by filter"
    if method == "SkipGracefulOrchestrationTerminations":
        return f"{len(request.instanceBatch.instanceIds)} instance(s)"
    if method == "CleanEntityStorage":
        return f"removeEmptyEntities={request.removeEmptyEntities} releaseOrphanedLocks={request.releaseOrphanedLocks}"
    if method == "DeleteTaskHub":
        return "the task hub"
    if method == "RerunWorkflowFromEvent":
        return f"instance {request.sourceInstanceID!r} from event {request.eventID}"
    return f"instance {request.instanceId!r}"


def _result(method: str, reply) -> str:
    """What a destructive call that succeeded did, from its reply."""
    if method == "PurgeInstances" and reply is not None:
        return f"OK, {reply.deletedInstanceCount} purged"
    if method == "SkipGracefulOrchestrationTerminations" and reply is not None:
        return f"OK, {len(reply.unterminatedInstanceIds)} not terminated (unknown or already ended)"
    if method == "CleanEntityStorage" and reply is not None:
        return f"OK, {reply.emptyEntitiesRemoved} empty entities removed, {reply.orphanedLocksReleased} locks released"
    return "OK"


class CallInterceptor:
    def __init__(self, authenticator: Authenticator, default_hub: str, count: bool = True,
                 log_context: bool = True, token_hub_name: Callable[[str], str] | None = None) -> None:
        """``count``: keep the per-call metrics (only worth it when they are served). ``log_context``:
        name each call's task hub and instance for the logs (only JSON logs show them).
        ``token_hub_name``: the hub name tokens know, of the hub a completion token names (the Dapr
        port's hubs are twins of those named in the tokens file)."""
        self.token_hub_name = token_hub_name
        self.authenticator = authenticator
        self.default_hub = default_hub
        self.count = count
        self.log_context = log_context

    def _hub_of(self, method: str) -> Callable[[object, tuple], str | None]:
        """How a call of ``method`` names its task hub: (request, metadata) -> hub."""
        if method in TOKEN_HUB_CALLS:
            rename = self.token_hub_name
            if rename is None:
                return lambda request, metadata: token_hub(request)

            def from_token(request, metadata) -> str | None:
                hub = token_hub(request)
                return None if hub is None else rename(hub)

            return from_token
        default = self.default_hub

        def from_metadata(request, metadata) -> str:
            for key, value in metadata:
                if key == TASK_HUB_METADATA_KEY:
                    return value
            return default

        return from_metadata

    def wrap(self, method: str, inner: Handler) -> Handler:
        """The handler of ``method`` (a name of the service) as every call of it is served."""
        hub_of = self._hub_of(method)
        authenticate = self.authenticator.tokens is not None
        destructive = method in DESTRUCTIVE
        revocable = authenticate and method in LONG_CALLS  # ends when its caller loses access
        count = self.count

        if not (authenticate or destructive or count):
            if not self.log_context:
                return inner  # nothing to do per call

            async def plain(request, context):
                logs.hub.set(hub_of(request, context.invocation_metadata() or ()))
                logs.instance.set(getattr(request, "instanceId", None) or None)
                return await inner(request, context)

            return plain

        authenticator = self.authenticator
        series: dict = {}  # the metrics' children of this method, made at its first call

        def observe(code: grpc.StatusCode | None, seconds: float) -> None:
            counter = series.get(code)
            if counter is None:
                counter = series[code] = REQUESTS.labels(method, "OK" if code is None else code.name)
            counter.inc()
            histogram = series.get("duration")
            if histogram is None:
                histogram = series["duration"] = DURATION.labels(method)
            histogram.observe(seconds)

        async def behavior(request, context):
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()
            hub = hub_of(request, metadata)
            logs.hub.set(hub)
            logs.instance.set(getattr(request, "instanceId", None) or None)
            try:
                identity = ANONYMOUS
                if authenticate:
                    try:
                        identity = authenticator.identify(metadata)
                        authenticator.check(identity, method, hub)
                    except Unauthenticated as exc:
                        log.info("%s refused: UNAUTHENTICATED %s (peer %s)", method, exc, context.peer())
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
                    except PermissionDenied as exc:
                        log.info("%s refused: PERMISSION_DENIED %s (peer %s)", method, exc, context.peer())
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                if revocable:
                    try:
                        return await authenticator.revocable(inner(request, context), metadata, method, hub)
                    except Unauthenticated as exc:
                        log.info("%s of %s ended: UNAUTHENTICATED %s", method, identity.name, exc)
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
                    except PermissionDenied as exc:
                        log.info("%s of %s ended: PERMISSION_DENIED %s", method, identity.name, exc)
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                if not destructive:
                    return await inner(request, context)
                return await audited(request, context, hub, identity)
            finally:
                if count:
                    observe(context.code(), time.perf_counter() - started)

        async def audited(request, context, hub, identity):
            """Serve a destructive call, then log it once with its outcome."""
            _note.set(None)
            reply = None
            outcome = None
            try:
                reply = await inner(request, context)
                return reply
            except asyncio.CancelledError:
                outcome = grpc.StatusCode.CANCELLED.name
                raise
            except Exception:
                code = context.code()
                outcome = code.name if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK \
                    else grpc.StatusCode.UNKNOWN.name
                raise
            finally:
                if outcome is None:
                    code = context.code()
                    outcome = _result(method, reply) if code in (None, grpc.StatusCode.OK) else code.name
                note = _note.get()
                log.info("%s on task hub %r (%s) by %s (role %s, peer %s): %s%s", method, hub,
                         _subject(method, request), identity.name, identity.role, context.peer(), outcome,
                         f"; {note}" if note else "")

        return behavior
