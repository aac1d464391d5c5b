"""What every RPC handler shares: the one mapping from domain errors to gRPC status codes."""
from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import grpc

from .. import errors


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The one mapping from domain errors to gRPC status codes."""
    if isinstance(exc, errors.PayloadTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, errors.InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, errors.InstanceExists):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    if isinstance(exc, errors.InstanceNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, errors.FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, errors.StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later"
    return None


def rpc(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Run an RPC handler; expected errors become their gRPC status."""

    @functools.wraps(method)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except (errors.StoreError, errors.InvalidRequest) as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    return handler
