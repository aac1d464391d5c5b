"""The gRPC surface: translate TaskHubSidecarService requests to engine and store calls and back.

It validates input, maps domain errors to gRPC status codes in one place
(:func:`scheduler.api.status.status_of`) and never builds Redis commands itself.
The RPCs are grouped: instance creation and reads here, lifecycle changes in
lifecycle.py, queries and purges in queries.py, the worker protocol in work.py, durable
entities in entities.py.
"""
from __future__ import annotations

import logging

import grpc
from google.protobuf import empty_pb2, message_factory

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from .._proto import orchestrator_service_pb2_grpc as pb_grpc
from ..config import NAME_RE, Config
from ..engine import Engine
from ..protocol import TERMINAL, new_id, quote
from ..store.keys import HubKeys
from . import translate, validation
from .entities import EntityRPCs
from .interceptors import audit_note
from .lifecycle import LifecycleRPCs
from .queries import QueryRPCs
from .status import rpc
from .work import WorkRPCs

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
TASK_HUB_METADATA_KEY = "taskhub"
# Waiters answer this long before the caller's deadline, so the caller gets our answer
# (exists=false, or DEADLINE_EXCEEDED with a message) rather than its own bare timeout.
WAIT_DEADLINE_MARGIN = 0.1


class Servicer(LifecycleRPCs, QueryRPCs, WorkRPCs, EntityRPCs, pb_grpc.TaskHubSidecarServiceServicer):
    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.store = engine.store  # reads that need no rule of the engine go to the store directly
        self.config = config
        self.max_state_bytes = config.limits.max_state_bytes

    def _hub_name(self, context: grpc.aio.ServicerContext) -> str:
        """The task hub the caller names with the ``taskhub`` metadata key, else the default one."""
        for key, value in context.invocation_metadata() or ():
            if key == TASK_HUB_METADATA_KEY:
                if not NAME_RE.match(value):
                    raise errors.InvalidRequest(
                        f"task hub name {quote(value)} (metadata '{TASK_HUB_METADATA_KEY}') must match {NAME_RE.pattern}")
                return value
        return self.config.task_hub

    async def _hub(self, context: grpc.aio.ServicerContext) -> HubKeys:
        """The caller's task hub, created on first use unless tokens are in use (then only CreateTaskHub,
        an admin's call, creates one: NOT_FOUND, nothing written)."""
        return await self.engine.hubs.get(self._hub_name(context), create=not self.config.authenticates)

    async def _existing_hub(self, context: grpc.aio.ServicerContext) -> HubKeys | None:
        """Like :meth:`_hub` for calls that only read: None when the hub does not exist (nothing is created)."""
        return await self.engine.hubs.existing(self._hub_name(context))

    # -- RPCs ------------------------------------------------------------------------------

    async def Hello(self, request, context):
        return empty_pb2.Empty()

    @rpc
    async def StartInstance(self, request: pb.CreateInstanceRequest, context):
        instance_id = request.instanceId or new_id()
        validation.check_create_request(request, instance_id, self.config.max_payload_bytes, self.max_state_bytes)
        hub = await self._hub(context)
        await self.engine.orchestrations.start(hub, translate.new_instance(request, instance_id))
        return pb.CreateInstanceResponse(instanceId=instance_id)

    @rpc
    async def GetInstance(self, request: pb.GetInstanceRequest, context):
        hub = self.store.cached_hub(self._hub_name(context)) or await self._existing_hub(context)
        h = None if hub is None else await self.store.get_instance(hub, request.instanceId)
        return translate.instance_response(request.instanceId, h, request.getInputsAndOutputs)

    @rpc
    async def WaitForInstanceStart(self, request: pb.GetInstanceRequest, context):
        return await self._wait(request, context, _has_started, "start")

    @rpc
    async def WaitForInstanceCompletion(self, request: pb.GetInstanceRequest, context):
        return await self._wait(request, context, _has_ended, "complete")

    @rpc
    async def CreateTaskHub(self, request: pb.CreateTaskHubRequest, context):
        name = self._hub_name(context)
        wipes = request.recreateIfExists and await self.engine.hubs.existing(name) is not None
        await self.engine.hubs.create(name, request.recreateIfExists)
        if wipes:
            audit_note("recreateIfExists wiped the existing task hub")
        return pb.CreateTaskHubResponse()

    @rpc
    async def DeleteTaskHub(self, request: pb.DeleteTaskHubRequest, context):
        await self.engine.hubs.delete(self._hub_name(context))
        return pb.DeleteTaskHubResponse()

    async def _wait(self, request: pb.GetInstanceRequest, context, done, what: str):
        """Return the instance once ``done(instance hash)`` holds; DEADLINE_EXCEEDED at the caller's deadline."""
        async def read() -> dict[str, bytes] | None:
            hub = await self._existing_hub(context)
            return None if hub is None else await self.store.get_instance(hub, request.instanceId)

        def time_left() -> float | None:
            remaining = context.time_remaining()
            return None if remaining is None else remaining - WAIT_DEADLINE_MARGIN

        h, ended = await self.engine.waiters.wait_for(self._hub_name(context), request.instanceId, read,
                                                      lambda h: h is not None and done(h), time_left)
        if not ended and h is not None:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"timed out waiting for instance '{request.instanceId}' to {what}")
        return _instance_response(request, h)


def _instance_response(request: pb.GetInstanceRequest, h: dict[str, bytes] | None) -> pb.GetInstanceResponse:
    return translate.instance_response(request.instanceId, h, request.getInputsAndOutputs)


def _has_started(h: dict[str, bytes]) -> bool:
    """Left PENDING for good: a suspended instance that never ran (prev_status PENDING) has not started."""
    status = h["status"]
    return status != b"PENDING" and not (status == b"SUSPENDED" and h.get("prev_status") == b"PENDING")


def _has_ended(h: dict[str, bytes]) -> bool:
    return h["status"].decode() in TERMINAL


def add_to_server(servicer, server: grpc.aio.Server, wrap=None, service=SERVICE, name: str | None = None) -> None:
    """Register the servicer as the generated code would (but see below), with request parsing that never
    fails: a request whose bytes do not parse reaches its handler as None, which answers INVALID_ARGUMENT
    (the generated deserializers make grpc answer UNKNOWN and log a traceback per call).
    ``wrap(method name, handler)``: what every call goes through (see api/interceptors.py). ``service``: the
    service descriptor (ours, or Dapr's fork), registered under ``name`` (default: its full name)."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handler = getattr(servicer, method.name)
        if wrap is not None:
            handler = wrap(method.name, handler)
        handlers[method.name] = make(handler, request_deserializer=_parser(request_class),
                                     response_serializer=response_class.SerializeToString)
    # Generic handlers only: the generated code also registers the methods with
    # add_registered_method_handlers, which costs the grpc.aio server 4-8% more CPU per call (measured).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name or service.full_name, handlers),))


def _parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception:  # noqa: BLE001 - whatever the bytes are, the handler answers INVALID_ARGUMENT
            return None

    return parse
