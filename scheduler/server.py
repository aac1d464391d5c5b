"""The gRPC surface: translate TaskHubSidecarService requests to store calls and back.

It validates input, maps domain errors to gRPC status codes in one place
(:func:`scheduler.rpc_common.status_of`) and never builds Redis commands itself.
The RPCs are grouped: instance creation and reads here, lifecycle changes in
:mod:`scheduler.rpc_lifecycle`, queries and purges in :mod:`scheduler.rpc_queries`.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
import logging
from collections.abc import Callable

import grpc
from google.protobuf import empty_pb2

from . import convert, errors, validation
from ._proto import orchestrator_service_pb2 as pb
from ._proto import orchestrator_service_pb2_grpc as pb_grpc
from .config import NAME_RE, Config
from .keys import HubKeys
from .notify import Notifier
from .rpc_common import rpc
from .rpc_lifecycle import LifecycleRPCs
from .rpc_queries import QueryRPCs
from .dispatcher import WorkStream
from .rpc_work import WorkRPCs
from .store import Store

log = logging.getLogger(__name__)

TASK_HUB_METADATA_KEY = "taskhub"
# Waiters re-read the instance at least this often, in case a wake-up was missed.
WAIT_RECHECK_SECONDS = 5.0
# Waiters answer this long before the caller's deadline, so the caller gets our answer
# (exists=false, or DEADLINE_EXCEEDED with a message) rather than its own bare timeout.
WAIT_DEADLINE_MARGIN = 0.1


class Servicer(LifecycleRPCs, QueryRPCs, WorkRPCs, pb_grpc.TaskHubSidecarServiceServicer):
    def __init__(self, store: Store, notifier: Notifier, config: Config,
                 on_hub: Callable[[HubKeys], None] = lambda hub: None) -> None:
        self.store = store
        self.notifier = notifier
        self.config = config
        self._on_hub = on_hub
        self.work_streams: dict[str, set[WorkStream]] = defaultdict(set)  # hub -> this replica's open streams
        self.claims: dict[str, dict[str, bytes]] = {}  # claim token -> instance fields, see WorkStream

    async def _existing_hub(self, context: grpc.aio.ServicerContext) -> HubKeys | None:
        """Like :meth:`_hub` for read-only calls: None when the hub does not exist (nothing is created)."""
        name = self._hub_name(context)
        return self.store.cached_hub(name) or await self.store.find_hub(name)

    async def _hub(self, context: grpc.aio.ServicerContext) -> HubKeys:
        """The task hub the caller names with the ``taskhub`` metadata key, else the default one."""
        name = self._hub_name(context)
        hub = self.store.cached_hub(name)
        if hub is None:
            hub = await self.store.hub(name)
            self._on_hub(hub)
        return hub

    def _hub_name(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == TASK_HUB_METADATA_KEY:
                if not NAME_RE.match(value):
                    raise errors.InvalidRequest(
                        f"task hub name {value!r} (metadata '{TASK_HUB_METADATA_KEY}') must match {NAME_RE.pattern}")
                return value
        return self.config.task_hub

    # -- RPCs ------------------------------------------------------------------------------

    async def Hello(self, request, context):
        return empty_pb2.Empty()

    @rpc
    async def StartInstance(self, request: pb.CreateInstanceRequest, context):
        instance_id = request.instanceId or convert.new_id()
        validation.check_create_request(request, instance_id, self.config.max_payload_bytes)
        hub = await self._hub(context)
        await self.store.create_instance(hub, convert.new_instance(request, instance_id))
        if not request.HasField("scheduledStartTimestamp"):
            self.offer_work(hub.hub, "ready", [instance_id])
        return pb.CreateInstanceResponse(instanceId=instance_id)

    @rpc
    async def GetInstance(self, request: pb.GetInstanceRequest, context):
        hub = await self._existing_hub(context)
        if hub is None:
            return pb.GetInstanceResponse(exists=False)
        return await self._instance_response(hub, request)

    @rpc
    async def WaitForInstanceStart(self, request: pb.GetInstanceRequest, context):
        return await self._wait(request, context, _has_started, "start")

    @rpc
    async def WaitForInstanceCompletion(self, request: pb.GetInstanceRequest, context):
        return await self._wait(request, context, _has_ended, "complete")

    @rpc
    async def CreateTaskHub(self, request: pb.CreateTaskHubRequest, context):
        hub = await self.store.create_task_hub(self._hub_name(context), request.recreateIfExists)
        self._on_hub(hub)
        return pb.CreateTaskHubResponse()

    @rpc
    async def DeleteTaskHub(self, request: pb.DeleteTaskHubRequest, context):
        await self.store.delete_task_hub(self._hub_name(context))
        return pb.DeleteTaskHubResponse()

    # -- helpers ---------------------------------------------------------------------------

    async def _instance_response(self, hub: HubKeys, request: pb.GetInstanceRequest,
                                 h: dict[str, bytes] | None = None) -> pb.GetInstanceResponse:
        if h is None:
            h = await self.store.get_instance(hub, request.instanceId)
        if h is None:
            return pb.GetInstanceResponse(exists=False)
        state = convert.orchestration_state(request.instanceId, h, request.getInputsAndOutputs)
        return pb.GetInstanceResponse(exists=True, orchestrationState=state)

    async def _wait(self, request: pb.GetInstanceRequest, context, done: Callable[[dict[str, bytes]], bool],
                    what: str):
        """Return the instance once ``done(instance hash)`` holds; DEADLINE_EXCEEDED at the caller's deadline."""
        name = self._hub_name(context)
        with self.notifier.watch(name, request.instanceId) as changed:
            while True:
                changed.clear()
                hub = await self._existing_hub(context)
                h = None if hub is None else await self.store.get_instance(hub, request.instanceId)
                if h is not None and done(h):
                    return await self._instance_response(hub, request, h)
                remaining = context.time_remaining()
                if remaining is not None and remaining <= WAIT_DEADLINE_MARGIN:
                    if h is None:
                        return pb.GetInstanceResponse(exists=False)
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"timed out waiting for instance '{request.instanceId}' to {what}")
                timeout = WAIT_RECHECK_SECONDS if remaining is None else \
                    min(remaining - WAIT_DEADLINE_MARGIN, WAIT_RECHECK_SECONDS)
                try:
                    await asyncio.wait_for(changed.wait(), timeout)
                except asyncio.TimeoutError:
                    pass


def _has_started(h: dict[str, bytes]) -> bool:
    """Left PENDING for good: a suspended instance that never ran (prev_status PENDING) has not started."""
    status = h["status"]
    return status != b"PENDING" and not (status == b"SUSPENDED" and h.get("prev_status") == b"PENDING")


def _has_ended(h: dict[str, bytes]) -> bool:
    return h["status"] in (b"COMPLETED", b"FAILED", b"TERMINATED")


def _unimplemented(name: str):
    async def handler(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by this server yet")

    handler.__name__ = name
    return handler


# Every RPC of the contract that this server does not implement yet answers
# UNIMPLEMENTED naming itself (instead of the generated "Method not implemented!").
for _method in pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"].methods:
    if getattr(Servicer, _method.name) is getattr(pb_grpc.TaskHubSidecarServiceServicer, _method.name):
        setattr(Servicer, _method.name, _unimplemented(_method.name))
