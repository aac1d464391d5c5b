"""The worker protocol: GetWorkItems and the completion RPCs (mixed into :class:`scheduler.api.servicer.Servicer`).

Completion tokens name the hub and work item they claim (protocol.ClaimToken), so any
replica accepts a completion or an abandon; the token must still be the item's current claim.
"""
from __future__ import annotations

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..engine.work_kinds import name_filter
from ..protocol import ACTIVITY, ENTITY, ORCHESTRATION, ClaimToken, parse_claim_token
from ..store.keys import HubKeys
from .status import rpc


DAPR_SUFFIX = "~dapr"  # the task hubs of the Dapr port (api/dapr/servicer.py)


class WorkRPCs:
    """Uses the Servicer's ``engine`` and ``_hub``."""

    flavour_suffix = ""  # the Dapr port's servicer acts in hubs named with DAPR_SUFFIX

    @rpc
    async def GetWorkItems(self, request: pb.GetWorkItemsRequest, context):
        hub = await self._hub(context)
        limits = {ORCHESTRATION: max(request.maxConcurrentOrchestrationWorkItems, 0),
                  ACTIVITY: max(request.maxConcurrentActivityWorkItems, 0),
                  ENTITY: max(request.maxConcurrentEntityWorkItems, 0)}
        filters = {}
        if request.HasField("workItemFilters"):
            f = request.workItemFilters
            filters = {ORCHESTRATION: name_filter(f.orchestrations), ACTIVITY: name_filter(f.activities),
                       ENTITY: name_filter(f.entities)}
        await self.engine.dispatcher.serve(hub, limits, filters, context.write)

    async def _claim(self, token: str, kind: str, instance_id: str = "") -> tuple[HubKeys, ClaimToken]:
        """The hub and claim a completion token names; it must be about ``instance_id`` when given."""
        claim = parse_claim_token(token, kind)
        if instance_id and instance_id != claim.instance_id:
            raise errors.InvalidRequest(
                f"instanceId '{instance_id}' does not match the completion token (issued for '{claim.instance_id}')")
        if claim.hub.endswith(DAPR_SUFFIX) != bool(self.flavour_suffix):  # issued on the other port
            raise errors.LeaseLost(claim.instance_id)
        hub = await self.engine.hubs.existing(claim.hub)
        if hub is None:
            raise errors.LeaseLost(claim.instance_id)
        return hub, claim

    @rpc
    async def CompleteOrchestratorTask(self, request: pb.OrchestratorResponse, context):
        hub, claim = await self._claim(request.completionToken, ORCHESTRATION, request.instanceId)
        await self.engine.orchestrations.complete_episode(hub, claim.item, request.completionToken, request)
        return pb.CompleteTaskResponse()

    @rpc
    async def CompleteActivityTask(self, request: pb.ActivityResponse, context):
        hub, claim = await self._claim(request.completionToken, ACTIVITY, request.instanceId)
        await self.engine.orchestrations.complete_activity(hub, claim.item, request.completionToken, request)
        return pb.CompleteTaskResponse()

    @rpc
    async def AbandonTaskOrchestratorWorkItem(self, request: pb.AbandonOrchestrationTaskRequest, context):
        hub, claim = await self._claim(request.completionToken, ORCHESTRATION)
        await self.engine.dispatcher.abandon(hub, ORCHESTRATION, claim.item, request.completionToken)
        return pb.AbandonOrchestrationTaskResponse()

    @rpc
    async def CompleteEntityTask(self, request: pb.EntityBatchResult, context):
        hub, claim = await self._claim(request.completionToken, ENTITY)
        await self.engine.entities.complete_batch(hub, claim.item, request.completionToken, request)
        return pb.CompleteTaskResponse()

    @rpc
    async def AbandonTaskEntityWorkItem(self, request: pb.AbandonEntityTaskRequest, context):
        hub, claim = await self._claim(request.completionToken, ENTITY)
        await self.engine.dispatcher.abandon(hub, ENTITY, claim.item, request.completionToken)
        return pb.AbandonEntityTaskResponse()

    @rpc
    async def AbandonTaskActivityWorkItem(self, request: pb.AbandonActivityTaskRequest, context):
        hub, claim = await self._claim(request.completionToken, ACTIVITY)
        await self.engine.dispatcher.abandon(hub, ACTIVITY, claim.item, request.completionToken)
        return pb.AbandonActivityTaskResponse()
