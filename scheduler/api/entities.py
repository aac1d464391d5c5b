"""The client RPCs of durable entities (mixed into :class:`scheduler.api.servicer.Servicer`).

Behaviour follows the SDK's in-memory reference backend: an entity exists from its first
message until CleanEntityStorage removes it (empty: no state, nothing waiting, no lock), so
GetEntity finds an entity whose state was deleted (without state); a "transient" entity is one
with operations waiting; lastModifiedFrom is inclusive and lastModifiedTo exclusive. Where we
differ: a delayed signal waits for its time; lockedBy names the orchestration that holds the
lock; an instanceIdStartsWith without a leading "@" means an entity name prefix (as the .NET
client normalizes it); continuation tokens are the last entity id of a page, not offsets.
"""
from __future__ import annotations

from google.protobuf import wrappers_pb2

from .._proto import orchestrator_service_pb2 as pb
from ..protocol import new_id, ts_from_ms
from ..store import EntityRecord
from . import validation
from .queries import FRAMING_BYTES, _ms, _page_size
from .status import rpc

SCAN_PAGES = 10  # pages of ids one QueryEntities call looks through to fill a page past its filters


class EntityRPCs:
    """Uses the Servicer's ``engine``, ``store``, ``config``, ``_hub`` and ``_existing_hub``."""

    @rpc
    async def SignalEntity(self, request: pb.SignalEntityRequest, context):
        validation.check_entity_id("instanceId", request.instanceId)
        validation.check_name("name", request.name)
        if request.HasField("input"):
            validation.check_payload("input", request.input.value, self.config.max_payload_bytes)
        validation.check_identifier("requestId", request.requestId)
        scheduled = None
        if request.HasField("scheduledTime"):
            validation.check_timestamp("scheduledTime", request.scheduledTime)
            scheduled = request.scheduledTime
        hub = await self._hub(context)
        await self.engine.entities.signal(hub, request.instanceId, request.name,
                                          request.input.value if request.HasField("input") else None,
                                          request.requestId or new_id(), scheduled)
        return pb.SignalEntityResponse()

    @rpc
    async def GetEntity(self, request: pb.GetEntityRequest, context):
        validation.check_entity_id("instanceId", request.instanceId)
        hub = await self._existing_hub(context)
        record = None if hub is None else await self.store.get_entity(hub, request.instanceId)
        if record is None:
            return pb.GetEntityResponse(exists=False)
        return pb.GetEntityResponse(exists=True, entity=_metadata(record, request.includeState))

    @rpc
    async def QueryEntities(self, request: pb.QueryEntitiesRequest, context):
        q = request.query
        prefix = _entity_prefix(q.instanceIdStartsWith.value) if q.HasField("instanceIdStartsWith") else ""
        page_size = _page_size("query.pageSize", q.pageSize.value if q.HasField("pageSize") else 0)
        after = q.continuationToken.value or None
        if after is not None:
            validation.check_identifier("query.continuationToken", after)
        from_ms, to_ms = _ms(q, "lastModifiedFrom", "query."), _ms(q, "lastModifiedTo", "query.")
        reply = pb.QueryEntitiesResponse()
        hub = await self._existing_hub(context)
        if hub is None:
            return reply
        budget, more = self.config.reply_bytes, True
        for _ in range(SCAN_PAGES):
            ids, more = await self.engine.entities.entity_page(hub, prefix, after, page_size - len(reply.entities))
            for entity_id, record in zip(ids, await self.store.get_entities(hub, ids)):
                after = entity_id
                if record is None or (from_ms is not None and record.modified_ms < from_ms) or \
                        (to_ms is not None and record.modified_ms >= to_ms) or \
                        (not q.includeTransient and record.backlog > 0):
                    continue
                metadata = _metadata(record, q.includeState)
                budget -= metadata.ByteSize() + FRAMING_BYTES
                if budget < 0 and reply.entities:
                    reply.continuationToken.value = reply.entities[-1].instanceId
                    return reply
                reply.entities.append(metadata)
            if not more or len(reply.entities) >= page_size:
                break
        if more and after is not None:
            reply.continuationToken.value = after
        return reply

    @rpc
    async def CleanEntityStorage(self, request: pb.CleanEntityStorageRequest, context):
        after = request.continuationToken.value or None
        if after is not None:
            validation.check_identifier("continuationToken", after)
        hub = await self._existing_hub(context)
        if hub is None:
            return pb.CleanEntityStorageResponse()
        removed, released, more = await self.engine.entities.clean(
            hub, request.removeEmptyEntities, request.releaseOrphanedLocks, after)
        reply = pb.CleanEntityStorageResponse(emptyEntitiesRemoved=removed, orphanedLocksReleased=released)
        if more is not None:
            reply.continuationToken.CopyFrom(wrappers_pb2.StringValue(value=more))
        return reply


def _metadata(record: EntityRecord, include_state: bool) -> pb.EntityMetadata:
    metadata = pb.EntityMetadata(instanceId=record.entity_id, lastModifiedTime=ts_from_ms(record.modified_ms),
                                 backlogQueueSize=record.backlog)
    if record.locked_by is not None:
        metadata.lockedBy.value = record.locked_by
    if include_state and record.state is not None:
        metadata.serializedState.value = record.state
    return metadata


def _entity_prefix(value: str) -> str:
    """An id prefix as the .NET client normalizes it: "@" in front, the entity name part lowercase."""
    validation.check_identifier("query.instanceIdStartsWith", value)
    prefix = value if value.startswith("@") else "@" + value
    at = prefix.find("@", 1)
    return prefix.lower() if at == -1 else prefix[:at].lower() + prefix[at:]

