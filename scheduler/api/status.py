"""What every RPC handler shares: the one mapping from domain errors to gRPC status codes.

A rejected request gets a status and a message a person understands, and one log line (no
traceback); an unexpected error gets INTERNAL and its traceback in the log. A call that meets
a task hub deleted meanwhile (HubGone: nothing was written) looks the hub up again and runs once more.
A call whose caller went away (it cancelled, or gave up at its deadline as the answer was being
sent) ends with one INFO line: a write or an abort to it fails inside grpc, and that is no bug.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import grpc

from .. import errors
from ..engine.streams import StreamStalled

log = logging.getLogger(__name__)

def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The one mapping from domain errors to gRPC status codes (None: not a domain error)."""
    if isinstance(exc, (errors.PayloadTooLarge, errors.LimitExceeded, errors.RedisOutOfMemory)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, errors.InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, errors.InstanceExists):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    if isinstance(exc, (errors.InstanceNotFound, errors.HubNotFound)):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, errors.FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, errors.NotReplicated):  # applied on the primary: must not say nothing was written
        return grpc.StatusCode.UNAVAILABLE, f"{exc}; read before retrying a change that is not idempotent"
    if isinstance(exc, (errors.StoreUnavailable, errors.HubDeleting, errors.HubGone, errors.Draining, StreamStalled)):
        return grpc.StatusCode.UNAVAILABLE, f"{exc}; nothing was written, retry later"
    if isinstance(exc, errors.StoreOutcomeUnknown):
        return grpc.StatusCode.DEADLINE_EXCEEDED, f"{exc}; the change may or may not have been applied"
    return None


def rpc(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Run an RPC handler; domain errors become their gRPC status, anything else INTERNAL."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        try:
            return await _answer(self, request, context)
        except grpc.aio.InternalError:  # a write or an abort to a call that is over (grpc's own error)
            log.info("%s ended: its caller had gone (cancelled, or past its deadline) when it was answered", name)
            raise asyncio.CancelledError() from None  # as grpc ends a call its caller cancelled

    async def _answer(self, request, context: grpc.aio.ServicerContext):
        if request is None:  # the request bytes did not parse (see servicer.add_to_server)
            return await _reject(context, name, grpc.StatusCode.INVALID_ARGUMENT,
                                 f"the {name} request could not be parsed as its protobuf message")
        try:
            try:
                return await method(self, request, context)
            except errors.HubGone:  # nothing was written: once more, with the hub as it is now
                self.engine.hubs.forget(self._hub_name(context))
                return await method(self, request, context)
        except (errors.StoreError, errors.InvalidRequest, StreamStalled) as exc:
            code, message = status_of(exc)
            return await _reject(context, name, code, message)
        except (grpc.aio.AbortError, grpc.aio.InternalError):
            raise
        except Exception:  # noqa: BLE001 - a bug: say so, and keep the details in the log
            log.exception("%s failed unexpectedly", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{name} failed unexpectedly; the server log has details")

    return handler


async def _reject(context: grpc.aio.ServicerContext, method: str, code: grpc.StatusCode, message: str):
    log.info("%s rejected: %s %s", method, code.name, message)
    await context.abort(code, message)
