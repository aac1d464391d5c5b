"""The worker protocol: GetWorkItems and the completion RPCs (mixed into :class:`scheduler.server.Servicer`).

Completion tokens name the hub and instance they claim, so any replica accepts a
completion or an abandon; the token must still be the instance's current claim.
"""
from __future__ import annotations

from collections import defaultdict

from . import convert, errors
from ._proto import orchestrator_service_pb2 as pb
from .dispatcher import WorkStream
from .keys import HubKeys
from .rpc_common import rpc


def _parse_token(token: str) -> tuple[str, str]:
    """(hub, instance id) of a completion token made by store_dispatch.claim_token."""
    hub, sep1, rest = token.partition("|")
    _, sep2, rest = rest.partition("|")
    kind, sep3, rest = rest.partition("|")
    instance_id, sep4, _ = rest.rpartition("|")
    if not (sep1 and sep2 and sep3 and sep4) or kind != "o" or not instance_id:
        raise errors.InvalidRequest(f"completionToken {token!r} is not a token this service issued")
    return hub, instance_id


class WorkRPCs:
    """Uses the Servicer's ``store``, ``config``, ``_hub``; keeps this replica's open work streams."""

    def _streams(self) -> dict[str, set[WorkStream]]:
        if not hasattr(self, "_work_streams"):
            self._work_streams: dict[str, set[WorkStream]] = defaultdict(set)
        return self._work_streams

    def work_available(self, hub_name: str) -> None:
        """A ready set of the hub stopped being empty: wake this replica's idle streams."""
        for stream in self._streams().get(hub_name, ()):
            stream.wake.set()

    @rpc
    async def GetWorkItems(self, request: pb.GetWorkItemsRequest, context):
        hub = await self._hub(context)
        stream = WorkStream(self.store, hub, self.config.lease_seconds, self.config.health_ping_seconds,
                            max(request.maxConcurrentOrchestrationWorkItems, 0))
        self._streams()[hub.hub].add(stream)
        try:
            await stream.run(context.write)
        finally:
            self._streams()[hub.hub].discard(stream)

    async def _token_hub(self, token: str, instance_id: str) -> tuple[HubKeys, str]:
        hub_name, token_instance = _parse_token(token)
        if instance_id and instance_id != token_instance:
            raise errors.InvalidRequest(
                f"instanceId '{instance_id}' does not match the completion token (issued for '{token_instance}')")
        hub = self.store.cached_hub(hub_name) or await self.store.find_hub(hub_name)
        if hub is None:
            raise errors.LeaseLost(token_instance)
        return hub, token_instance

    def _finished(self, hub: HubKeys, instance_id: str) -> None:
        for stream in self._streams().get(hub.hub, ()):
            if instance_id in stream.held:
                stream.done_with(instance_id)

    @rpc
    async def CompleteOrchestratorTask(self, request: pb.OrchestratorResponse, context):
        hub, instance_id = await self._token_hub(request.completionToken, request.instanceId)
        events, status, output, failure = convert.episode_result(request)
        custom = request.customStatus.value if request.HasField("customStatus") else None
        await self.store.complete_orchestration(hub, instance_id, request.completionToken, events,
                                                status, output, failure, custom)
        self._finished(hub, instance_id)
        return pb.CompleteTaskResponse()

    @rpc
    async def AbandonTaskOrchestratorWorkItem(self, request: pb.AbandonOrchestrationTaskRequest, context):
        hub, instance_id = await self._token_hub(request.completionToken, "")
        if not await self.store.release_orchestration(hub, instance_id, request.completionToken):
            raise errors.LeaseLost(instance_id)
        self._finished(hub, instance_id)
        return pb.AbandonOrchestrationTaskResponse()
