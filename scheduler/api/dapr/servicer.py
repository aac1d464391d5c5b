"""Dapr Workflow's SDKs on their own port (``--dapr-port``): Dapr's fork of the contract, served by the
same engine and store as ours.

**Flavours are task hubs.** Every call on the Dapr port acts in the Dapr twin of the task hub it names
(``<hub>~dapr``: a name no call on our port can give, since ``~`` is not allowed there), so an
instance keeps the flavour it was started with, a Dapr worker is handed only Dapr work and an official
SDK worker none of it, with every mechanism of the engine unchanged (leases, offers, work claimed by the
step that made it, filters, queries, retention, limits). Tokens name the hub without the suffix: a
token for ``orders`` may use ``orders`` on both ports. A completion token names the twin it was issued
in, and each port takes only its own.

The RPCs translate Dapr's messages (translate.py) and run ours (:class:`DaprHubs`, the servicer of our
contract in the twins); what only Dapr has is here: ListInstanceIDs, GetInstanceHistory,
RerunWorkflowFromEvent, forced purges, the reuse policy's action, version records and stalls.
"""
from __future__ import annotations

import logging

from google.protobuf import empty_pb2, wrappers_pb2

from ... import errors
from ..._proto import orchestrator_service_pb2 as pb
from ..._proto.dapr import orchestrator_service_pb2 as dpb
from ...engine.events import status_name
from ...engine import rerun
from ...protocol import ORCHESTRATION, TERMINAL, new_id, quote
from ...store import InstanceFilter
from .. import validation
from ..queries import _cursor, _page_size
from ..servicer import Servicer
from ..status import rpc
from ..work import DAPR_SUFFIX
from .translate import history_out, orchestrator_response, stalled_event, to_dapr, to_ours, version_record, work_item

log = logging.getLogger(__name__)

SUFFIX = DAPR_SUFFIX
SERVICE = dpb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
WIRE_NAME = "TaskHubSidecarService"  # the path Dapr's SDKs call (their contract has no package)
HISTORY_PAGE = 1000
NO_REWIND = ("RewindInstance is not served on the Dapr port: Dapr's workers do not rewind; "
             "RerunWorkflowFromEvent runs a workflow again from one of its events")


def twin(hub: str) -> str:
    return hub + SUFFIX


def visible(hub: str) -> str:
    """The hub name a caller gave, of a Dapr twin's name (tokens name that one)."""
    return hub.removesuffix(SUFFIX)


class DaprHubs(Servicer):
    """Our servicer, acting in the Dapr twins of the task hubs (the dashboard calls it for Dapr instances).
    What Dapr's workers cannot take is refused here, as on the Dapr port."""

    flavour_suffix = SUFFIX

    def _hub_name(self, context) -> str:
        return twin(super()._hub_name(context))

    @rpc
    async def RewindInstance(self, request, context):
        raise errors.FailedPrecondition(NO_REWIND)

    @rpc
    async def RestartInstance(self, request, context):
        raise errors.FailedPrecondition("RestartInstance is not in Dapr's contract: a Dapr workflow is started "
                                        "again by a client's StartInstance or RerunWorkflowFromEvent")


class _Writes:
    """A call's context whose ``write`` translates our messages to Dapr's."""

    def __init__(self, context, translate) -> None:
        self._context = context
        self._translate = translate

    async def write(self, message) -> None:
        await self._context.write(self._translate(message))

    def __getattr__(self, name):
        return getattr(self._context, name)


def _state(reply: pb.GetInstanceResponse) -> dpb.GetInstanceResponse:
    return to_dapr(reply, dpb.GetInstanceResponse)


class DaprServicer:
    def __init__(self, engine, config) -> None:
        self.ours = DaprHubs(engine, config)
        self.engine = engine
        self.store = engine.store
        self.config = config

    def _hub_name(self, context) -> str:  # for status.rpc's retry after a hub was deleted
        return self.ours._hub_name(context)

    async def Hello(self, request, context):
        return empty_pb2.Empty()

    # -- clients -------------------------------------------------------------------------------------

    @rpc
    async def StartInstance(self, request: dpb.CreateInstanceRequest, context):
        ours = to_ours(request, pb.CreateInstanceRequest)
        if request.HasField("orchestrationIdReusePolicy"):
            policy = request.orchestrationIdReusePolicy
            ours.orchestrationIdReusePolicy.Clear()
            existing = None
            if request.instanceId:
                validation.check_identifier("instanceId", request.instanceId)
                hub = await self.ours._existing_hub(context)
                existing = None if hub is None else await self.store.get_instance(hub, request.instanceId)
            status = None if existing is None else existing["status"].decode()
            listed = {status_name(s) for s in policy.operationStatus if s in pb.OrchestrationStatus.values()}
            if status is not None and status in listed:
                if policy.action == dpb.IGNORE:  # the existing instance stands; nothing is written
                    return dpb.CreateInstanceResponse(instanceId=request.instanceId)
                if policy.action == dpb.TERMINATE:
                    if status not in TERMINAL:
                        await self.engine.orchestrations.terminate(hub, request.instanceId, None, recursive=False,
                                                                   force=True)
                    ours.orchestrationIdReusePolicy.replaceableStatus.extend(
                        [pb.ORCHESTRATION_STATUS_TERMINATED, *(s for s in policy.operationStatus
                                                               if s in pb.OrchestrationStatus.values())])
        reply = await self.ours.StartInstance(ours, context)
        return to_dapr(reply, dpb.CreateInstanceResponse)

    @rpc
    async def GetInstance(self, request, context):
        reply = _state(await self.ours.GetInstance(to_ours(request, pb.GetInstanceRequest), context))
        state = reply.orchestrationState
        if reply.exists and state.orchestrationStatus == dpb.ORCHESTRATION_STATUS_SUSPENDED:
            # a stall suspends the orchestration right after its executionStalled event (see
            # CompleteOrchestratorTask); until it runs again, that is its last event: it is STALLED
            hub = await self.ours._existing_hub(context)
            last = None if hub is None else await self.store.history_page(hub, request.instanceId, -1, 1)
            if last and dpb.HistoryEvent.FromString(last[0]).HasField("executionStalled"):
                state.orchestrationStatus = dpb.ORCHESTRATION_STATUS_STALLED
        return reply

    @rpc
    async def WaitForInstanceStart(self, request, context):
        return _state(await self.ours.WaitForInstanceStart(to_ours(request, pb.GetInstanceRequest), context))

    @rpc
    async def WaitForInstanceCompletion(self, request, context):
        return _state(await self.ours.WaitForInstanceCompletion(to_ours(request, pb.GetInstanceRequest), context))

    @rpc
    async def RewindInstance(self, request, context):
        raise errors.FailedPrecondition(NO_REWIND)

    @rpc
    async def RaiseEvent(self, request, context):
        await self.ours.RaiseEvent(to_ours(request, pb.RaiseEventRequest), context)
        return dpb.RaiseEventResponse()

    @rpc
    async def TerminateInstance(self, request, context):
        await self.ours.TerminateInstance(to_ours(request, pb.TerminateRequest), context)
        return dpb.TerminateResponse()

    @rpc
    async def SuspendInstance(self, request, context):
        await self.ours.SuspendInstance(to_ours(request, pb.SuspendRequest), context)
        return dpb.SuspendResponse()

    @rpc
    async def ResumeInstance(self, request, context):
        await self.ours.ResumeInstance(to_ours(request, pb.ResumeRequest), context)
        return dpb.ResumeResponse()

    @rpc
    async def QueryInstances(self, request, context):
        reply = await self.ours.QueryInstances(to_ours(request, pb.QueryInstancesRequest), context)
        return to_dapr(reply, dpb.QueryInstancesResponse)

    @rpc
    async def PurgeInstances(self, request: dpb.PurgeInstancesRequest, context):
        """``force`` purges instances that have not ended too: each is terminated at once first (as
        SkipGracefulOrchestrationTerminations does), then purged."""
        copy = dpb.PurgeInstancesRequest()
        copy.CopyFrom(request)
        copy.ClearField("force")
        ours = to_ours(copy, pb.PurgeInstancesRequest)
        if request.force and request.WhichOneof("request") == "instanceId":
            validation.check_identifier("instanceId", request.instanceId)
            hub = await self.ours._existing_hub(context)
            if hub is not None:
                try:
                    await self.engine.orchestrations.terminate(hub, request.instanceId, None,
                                                               recursive=request.recursive, force=True)
                except errors.InstanceNotFound:
                    pass
        elif request.force:
            raise errors.InvalidRequest("force purges one instance by instanceId; a purge by filter "
                                        "purges instances that have ended")
        return to_dapr(await self.ours.PurgeInstances(ours, context), dpb.PurgeInstancesResponse)

    @rpc
    async def ListInstanceIDs(self, request: dpb.ListInstanceIDsRequest, context):
        """Every instance's id (any status), a page at a time in (creation time, id) order."""
        page_size = _page_size("pageSize", request.pageSize)
        after = _cursor("continuationToken", wrappers_pb2.StringValue(value=request.continuationToken))
        hub = await self.ours._existing_hub(context)
        if hub is None:
            return dpb.ListInstanceIDsResponse()
        found, more = await self.store.query_instances(hub, InstanceFilter(), page_size, after, start_events=False)
        reply = dpb.ListInstanceIDsResponse(instanceIds=[f.cursor.instance_id for f in found])
        if more is not None:
            reply.continuationToken = more.encode()
        return reply

    async def _history(self, hub, instance_id: str) -> list[dpb.HistoryEvent]:
        """The whole history as Dapr's events (at most --max-history-events, so bounded)."""
        validation.check_identifier("instanceId", instance_id)
        events: list[bytes] = []
        while True:
            page = None if hub is None else await self.store.history_page(hub, instance_id, len(events), HISTORY_PAGE)
            if page is None:
                raise errors.InstanceNotFound(instance_id)
            events += page
            if len(page) < HISTORY_PAGE:
                return history_out(pb.HistoryEvent.FromString(e) for e in events)

    @rpc
    async def GetInstanceHistory(self, request: dpb.GetInstanceHistoryRequest, context):
        events = await self._history(await self.ours._existing_hub(context), request.instanceId)
        reply = dpb.GetInstanceHistoryResponse(events=events)
        if reply.ByteSize() > self.config.reply_bytes:
            raise errors.PayloadTooLarge(
                f"the history of {quote(request.instanceId)} is {reply.ByteSize()} bytes, more than one reply may "
                f"carry ({self.config.reply_bytes}); StreamInstanceHistory sends it in chunks")
        return reply

    @rpc
    async def StreamInstanceHistory(self, request: dpb.StreamInstanceHistoryRequest, context):
        events = await self._history(await self.ours._existing_hub(context), request.instanceId)
        chunk = dpb.HistoryChunk()
        for event in events:
            if chunk.events and chunk.ByteSize() + event.ByteSize() + 16 > self.config.reply_bytes:
                await context.write(chunk)
                chunk = dpb.HistoryChunk()
            chunk.events.append(event)
        if chunk.events:
            await context.write(chunk)

    @rpc
    async def RerunWorkflowFromEvent(self, request: dpb.RerunWorkflowFromEventRequest, context):
        """A new instance (``newInstanceID``, or a new id) that runs the ended ``sourceInstanceID`` again from
        its activity event ``eventID`` (with ``input`` when ``overwriteInput``); see engine/rerun.py."""
        if not request.sourceInstanceID:
            raise errors.InvalidRequest("sourceInstanceID is required and must not be empty")
        validation.check_identifier("sourceInstanceID", request.sourceInstanceID)
        instance_id = request.newInstanceID or new_id()
        validation.check_identifier("newInstanceID", instance_id)
        if instance_id.startswith("@"):
            raise errors.InvalidRequest(f"newInstanceID {quote(instance_id)} starts with '@', which marks entity ids")
        if request.newChildWorkflowInstanceID:
            raise errors.InvalidRequest("newChildWorkflowInstanceID: running a workflow again from a child "
                                        "workflow's event is not supported; name an activity's event")
        new_input = None
        if request.overwriteInput:
            new_input = request.input.value if request.HasField("input") else ""
            validation.check_payload("input", new_input, self.config.max_payload_bytes)
        hub = await self.ours._hub(context)
        await rerun.rerun_from_event(self.engine.orchestrations, hub, request.sourceInstanceID, request.eventID,
                                     instance_id, new_input)
        return dpb.RerunWorkflowFromEventResponse(newInstanceID=instance_id)

    # -- task hubs -----------------------------------------------------------------------------------

    @rpc
    async def CreateTaskHub(self, request, context):
        await self.ours.CreateTaskHub(to_ours(request, pb.CreateTaskHubRequest), context)
        return dpb.CreateTaskHubResponse()

    @rpc
    async def DeleteTaskHub(self, request, context):
        await self.ours.DeleteTaskHub(to_ours(request, pb.DeleteTaskHubRequest), context)
        return dpb.DeleteTaskHubResponse()

    # -- workers -------------------------------------------------------------------------------------

    @rpc
    async def GetWorkItems(self, request, context):
        await self.ours.GetWorkItems(to_ours(request, pb.GetWorkItemsRequest), _Writes(context, work_item))

    @rpc
    async def CompleteOrchestratorTask(self, request: dpb.OrchestratorResponse, context):
        """An episode's result; a worker that has not the orchestration's version (orchestratorVersionNotAvailable)
        stalls it: the episode is recorded with an executionStalled event and nothing else, and the
        orchestration is suspended until a client resumes it (once a worker with that version runs)."""
        ours, stalled = orchestrator_response(request)
        extra = [e for e in (version_record(request),) if e is not None]
        if stalled:
            extra.append(stalled_event("the orchestration's version is not available on the worker"))
        hub, claim = await self.ours._claim(ours.completionToken, ORCHESTRATION, ours.instanceId)
        await self.engine.orchestrations.complete_episode(hub, claim.item, ours.completionToken, ours,
                                                          extra_events=extra)
        if stalled:
            log.warning("task hub %r: orchestration %r stalled: its version is not available on the worker; "
                        "it is suspended until resumed", hub.hub, claim.item)
            await self.engine.orchestrations.suspend(hub, claim.item, "stalled: version not available")
        return dpb.CompleteTaskResponse()

    @rpc
    async def CompleteActivityTask(self, request, context):
        await self.ours.CompleteActivityTask(to_ours(request, pb.ActivityResponse), context)
        return dpb.CompleteTaskResponse()

    @rpc
    async def CompleteEntityTask(self, request, context):
        await self.ours.CompleteEntityTask(to_ours(request, pb.EntityBatchResult), context)
        return dpb.CompleteTaskResponse()

    @rpc
    async def AbandonTaskActivityWorkItem(self, request, context):
        await self.ours.AbandonTaskActivityWorkItem(to_ours(request, pb.AbandonActivityTaskRequest), context)
        return dpb.AbandonActivityTaskResponse()

    @rpc
    async def AbandonTaskOrchestratorWorkItem(self, request, context):
        await self.ours.AbandonTaskOrchestratorWorkItem(to_ours(request, pb.AbandonOrchestrationTaskRequest), context)
        return dpb.AbandonOrchestrationTaskResponse()

    @rpc
    async def AbandonTaskEntityWorkItem(self, request, context):
        await self.ours.AbandonTaskEntityWorkItem(to_ours(request, pb.AbandonEntityTaskRequest), context)
        return dpb.AbandonEntityTaskResponse()

    # -- entities ------------------------------------------------------------------------------------

    @rpc
    async def SignalEntity(self, request, context):
        await self.ours.SignalEntity(to_ours(request, pb.SignalEntityRequest), context)
        return dpb.SignalEntityResponse()

    @rpc
    async def GetEntity(self, request, context):
        return to_dapr(await self.ours.GetEntity(to_ours(request, pb.GetEntityRequest), context),
                       dpb.GetEntityResponse)

    @rpc
    async def QueryEntities(self, request, context):
        return to_dapr(await self.ours.QueryEntities(to_ours(request, pb.QueryEntitiesRequest), context),
                       dpb.QueryEntitiesResponse)

    @rpc
    async def CleanEntityStorage(self, request, context):
        return to_dapr(await self.ours.CleanEntityStorage(to_ours(request, pb.CleanEntityStorageRequest), context),
                       dpb.CleanEntityStorageResponse)
