"""RPCs by which clients change an instance's lifecycle (mixed into :class:`scheduler.server.Servicer`).

What each does in each status is told by its script in ``lua/``. Where the protocol
leaves a case open, these follow the SDK's reference (in-memory) backend: an event
raised to a terminal instance, terminating a terminal instance, suspending a suspended
one and resuming one that is not suspended all succeed without changing anything.
Unlike the reference, terminating an unknown instance is NOT_FOUND (as every other
call about one instance). RestartInstance, as in the reference, starts a terminal
instance again (same or new id) with its name, version and input.
"""
from __future__ import annotations

from . import convert, errors, relay, validation
from ._proto import orchestrator_service_pb2 as pb
from .keys import HubKeys
from .rpc_common import rpc
from .store_queries import TERMINAL



def _text(request, field: str) -> str | None:
    return getattr(request, field).value if request.HasField(field) else None


class LifecycleRPCs:
    """Uses the Servicer's ``store``, ``config``, ``_hub`` and ``_existing_hub``."""

    async def _instance_hub(self, instance_id: str, context) -> HubKeys:
        """The existing hub of a call about one instance; NOT_FOUND if the hub does not exist."""
        if not instance_id:
            raise errors.InvalidRequest("instanceId is required and must not be empty")
        validation.check_identifier("instanceId", instance_id)
        hub = await self._existing_hub(context)
        if hub is None:
            raise errors.InstanceNotFound(instance_id)
        return hub

    def _check_payload(self, what: str, value: str | None) -> None:
        if value is not None:
            validation.check_payload(what, value, self.config.max_payload_bytes)

    @rpc
    async def RaiseEvent(self, request: pb.RaiseEventRequest, context):
        validation.check_name("name", request.name)
        payload = _text(request, "input")
        self._check_payload("input", payload)
        hub = await self._instance_hub(request.instanceId, context)
        await self.store.raise_event(hub, request.instanceId, convert.event_raised(request.name, payload))
        return pb.RaiseEventResponse()

    @rpc
    async def TerminateInstance(self, request: pb.TerminateRequest, context):
        output = _text(request, "output")
        self._check_payload("output", output)
        hub = await self._instance_hub(request.instanceId, context)
        event = convert.execution_terminated(output, request.recursive)
        await relay.terminate(self.store, hub, request.instanceId, event, output)
        return pb.TerminateResponse()

    @rpc
    async def SuspendInstance(self, request: pb.SuspendRequest, context):
        reason = _text(request, "reason")
        self._check_payload("reason", reason)
        hub = await self._instance_hub(request.instanceId, context)
        await self.store.suspend_instance(hub, request.instanceId, convert.execution_suspended(reason))
        return pb.SuspendResponse()

    @rpc
    async def ResumeInstance(self, request: pb.ResumeRequest, context):
        reason = _text(request, "reason")
        self._check_payload("reason", reason)
        hub = await self._instance_hub(request.instanceId, context)
        await self.store.resume_instance(hub, request.instanceId, convert.execution_resumed(reason))
        return pb.ResumeResponse()

    @rpc
    async def RestartInstance(self, request: pb.RestartInstanceRequest, context):
        hub = await self._instance_hub(request.instanceId, context)
        h = await self.store.get_instance(hub, request.instanceId)
        if h is None:
            raise errors.InstanceNotFound(request.instanceId)
        status = h["status"].decode()
        if status not in TERMINAL:
            raise errors.FailedPrecondition(
                f"orchestration instance '{request.instanceId}' is {status}; only a completed, failed or "
                "terminated instance can be restarted")
        started = pb.HistoryEvent.FromString(h["start_event"]).executionStarted
        new_id = convert.new_id() if request.restartWithNewInstanceId else request.instanceId
        again = pb.CreateInstanceRequest(instanceId=new_id, name=started.name)
        for field in ("version", "input"):
            if started.HasField(field):
                getattr(again, field).CopyFrom(getattr(started, field))
        if new_id == request.instanceId:  # replace the finished instance, and nothing else
            again.orchestrationIdReusePolicy.replaceableStatus.extend(convert.status_value(s) for s in sorted(TERMINAL))
        await self.store.create_instance(hub, convert.new_instance(again, new_id))
        return pb.RestartInstanceResponse(instanceId=new_id)
