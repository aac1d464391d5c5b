"""RPCs by which clients change an instance's lifecycle (mixed into :class:`scheduler.api.servicer.Servicer`).

What each does in each status is told by the engine (engine/orchestrations.py) and its
scripts. Where the protocol leaves a case open, these follow the SDK's reference
(in-memory) backend: an event raised to a terminal instance, terminating a terminal
instance, suspending a suspended one and resuming one that is not suspended all succeed
without changing anything. Unlike the reference, terminating an unknown instance is
NOT_FOUND (as every other call about one instance). RestartInstance, as in the
reference, starts a terminal instance again (same or new id) with its name, version and input.
RewindInstance, as in the reference, runs a failed instance again from its last good state
(FAILED_PRECONDITION for an instance in any other status; see engine/rewind.py).
SkipGracefulOrchestrationTerminations ends each instance at once, a running one too (its
worker's result is refused), and names those it did not terminate (unknown or already ended).
"""
from __future__ import annotations

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..protocol import TERMINAL
from ..store.keys import HubKeys
from . import validation
from .status import rpc


MAX_BATCH = 1000  # instances one SkipGracefulOrchestrationTerminations call ends


def _text(request, field: str) -> str | None:
    return getattr(request, field).value if request.HasField(field) else None


class LifecycleRPCs:
    """Uses the Servicer's ``engine``, ``config`` and ``_existing_hub``."""

    async def _instance_hub(self, instance_id: str, context) -> HubKeys:
        """The existing hub of a call about one instance; NOT_FOUND if the hub does not exist."""
        if not instance_id:
            raise errors.InvalidRequest("instanceId is required and must not be empty")
        validation.check_identifier("instanceId", instance_id)
        hub = await self._existing_hub(context)
        if hub is None:
            raise errors.InstanceNotFound(instance_id)
        return hub

    def _payload(self, request, field: str) -> str | None:
        """An optional text field of the request, checked against the payload limit."""
        value = _text(request, field)
        if value is not None:
            validation.check_payload(field, value, self.config.max_payload_bytes)
        return value

    @rpc
    async def RaiseEvent(self, request: pb.RaiseEventRequest, context):
        validation.check_name("name", request.name)
        payload = self._payload(request, "input")
        hub = await self._instance_hub(request.instanceId, context)
        await self.engine.orchestrations.raise_event(hub, request.instanceId, request.name, payload)
        return pb.RaiseEventResponse()

    @rpc
    async def TerminateInstance(self, request: pb.TerminateRequest, context):
        output = self._payload(request, "output")
        hub = await self._instance_hub(request.instanceId, context)
        await self.engine.orchestrations.terminate(hub, request.instanceId, output, request.recursive)
        return pb.TerminateResponse()

    @rpc
    async def SuspendInstance(self, request: pb.SuspendRequest, context):
        reason = self._payload(request, "reason")
        hub = await self._instance_hub(request.instanceId, context)
        await self.engine.orchestrations.suspend(hub, request.instanceId, reason)
        return pb.SuspendResponse()

    @rpc
    async def ResumeInstance(self, request: pb.ResumeRequest, context):
        reason = self._payload(request, "reason")
        hub = await self._instance_hub(request.instanceId, context)
        await self.engine.orchestrations.resume(hub, request.instanceId, reason)
        return pb.ResumeResponse()

    @rpc
    async def RestartInstance(self, request: pb.RestartInstanceRequest, context):
        hub = await self._instance_hub(request.instanceId, context)
        new_id = await self.engine.orchestrations.restart(hub, request.instanceId, request.restartWithNewInstanceId)
        return pb.RestartInstanceResponse(instanceId=new_id)

    @rpc
    async def RewindInstance(self, request: pb.RewindInstanceRequest, context):
        reason = self._payload(request, "reason")
        hub = await self._instance_hub(request.instanceId, context)
        await self.engine.orchestrations.rewind(hub, request.instanceId, reason)
        return pb.RewindInstanceResponse()

    @rpc
    async def SkipGracefulOrchestrationTerminations(self, request: pb.SkipGracefulOrchestrationTerminationsRequest,
                                                    context):
        ids = list(request.instanceBatch.instanceIds)
        if len(ids) > MAX_BATCH:
            raise errors.InvalidRequest(f"instanceBatch.instanceIds holds {len(ids)} ids; the limit is {MAX_BATCH}")
        for i, instance_id in enumerate(ids):
            validation.check_identifier(f"instanceBatch.instanceIds[{i}]", instance_id)
        reason = self._payload(request, "reason")
        hub = await self._existing_hub(context)
        unterminated = []
        for instance_id in ids:
            try:
                before = None if hub is None else await self.engine.orchestrations.terminate(
                    hub, instance_id, reason, recursive=False, force=True)
            except errors.InstanceNotFound:
                before = None
            if before is None or before in TERMINAL:
                unterminated.append(instance_id)
        return pb.SkipGracefulOrchestrationTerminationsResponse(unterminatedInstanceIds=unterminated)
