"""RPCs that find, list, stream and purge instances (mixed into :class:`scheduler.api.servicer.Servicer`).

Behaviour follows the SDK's in-memory reference backend where it defines one:
creation and completion ranges are ``from`` inclusive, ``to`` exclusive;
ListInstanceIds lists terminal instances only; purging a non-terminal instance
is not an error, it is skipped (``deletedInstanceCount`` 0); StreamInstanceHistory
is NOT_FOUND for an unknown instance and streams the history (nothing for an
instance never dispatched, whose events still wait in its inbox) in chunks of 100.
Where we differ: pages are ordered by (creation time, instance id), also for
ListInstanceIds (the reference orders that one by completion time, for which
this store keeps no index), and tokens are cursors, not offsets. A page does bounded work
whatever the data (see store/queries.py): it may end short, even empty, with a token.
``query.taskHubNames`` may name only the call's own task hub: any other is INVALID_ARGUMENT.
"""
from __future__ import annotations

from google.protobuf import wrappers_pb2

from .. import errors
from .._proto import orchestrator_service_pb2 as pb
from ..engine import subtree
from ..engine.events import status_name
from ..protocol import due_ms, quote
from ..store import Cursor, InstanceFilter
from . import translate, validation
from .status import rpc

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000  # larger requests get pages of this size (the SDK asks for 2**31-1 by default)
HISTORY_CHUNK = 100
MAX_PURGE_BATCH = 10_000
FRAMING_BYTES = 16  # what a message adds around each element of a repeated field, at most
_KNOWN_STATUSES = frozenset(pb.OrchestrationStatus.values())


class QueryRPCs:
    """Uses the Servicer's ``store``, ``config`` and ``_existing_hub``."""

    @rpc
    async def QueryInstances(self, request: pb.QueryInstancesRequest, context):
        q = request.query
        page_size = _page_size("query.maxInstanceCount", q.maxInstanceCount)
        after = _cursor("query.continuationToken", q.continuationToken) if q.HasField("continuationToken") else None
        if q.HasField("instanceIdPrefix"):
            validation.check_identifier("query.instanceIdPrefix", q.instanceIdPrefix.value)
        flt = InstanceFilter(
            statuses=_statuses("query.runtimeStatus", q.runtimeStatus),
            id_prefix=q.instanceIdPrefix.value,
            created_from_ms=_ms(q, "createdTimeFrom", "query."),
            created_to_ms=_ms(q, "createdTimeTo", "query."))
        for i, name in enumerate(q.taskHubNames):
            if name.value != self._hub_name(context):
                raise errors.InvalidRequest(
                    f"query.taskHubNames[{i}] is {quote(name.value)}: a query reads only the task hub of the call "
                    f"({quote(self._hub_name(context))}, from the 'taskhub' metadata); query each hub with its own call")
        hub = await self._existing_hub(context)
        if hub is None:
            return pb.QueryInstancesResponse()
        found, more = await self.store.query_instances(hub, flt, page_size, after)
        reply = pb.QueryInstancesResponse()
        budget = self.config.reply_bytes  # a page ends early rather than pass what a reply may carry
        for i, f in enumerate(found):
            state = translate.orchestration_state(f.cursor.instance_id, f.fields, q.fetchInputsAndOutputs)
            budget -= state.ByteSize() + FRAMING_BYTES
            if budget < 0 and i > 0:
                more = found[i - 1].cursor
                break
            reply.orchestrationState.append(state)
        if more is not None:
            reply.continuationToken.value = more.encode()
        return reply

    @rpc
    async def ListInstanceIds(self, request: pb.ListInstanceIdsRequest, context):
        page_size = _page_size("pageSize", request.pageSize)
        after = _cursor("lastInstanceKey", request.lastInstanceKey) if request.HasField("lastInstanceKey") else None
        flt = InstanceFilter(
            statuses=_statuses("runtimeStatus", request.runtimeStatus),
            completed_from_ms=_ms(request, "completedTimeFrom"),
            completed_to_ms=_ms(request, "completedTimeTo"),
            terminal_only=True)
        hub = await self._existing_hub(context)
        if hub is None:
            return pb.ListInstanceIdsResponse()
        found, more = await self.store.query_instances(hub, flt, page_size, after, start_events=False)
        reply = pb.ListInstanceIdsResponse(instanceIds=[f.cursor.instance_id for f in found])
        if more is not None:
            reply.lastInstanceKey.value = more.encode()
        return reply

    @rpc
    async def PurgeInstances(self, request: pb.PurgeInstancesRequest, context):
        # With `recursive`, each purged instance's sub-orchestrations go first (see scheduler.subtree) and
        # count too. `isOrchestration` needs no handling: entities are removed by CleanEntityStorage, not purged.
        which = request.WhichOneof("request")
        complete = True
        if which == "instanceId":
            validation.check_identifier("instanceId", request.instanceId)
        elif which == "instanceBatch":
            ids = list(request.instanceBatch.instanceIds)
            if len(ids) > MAX_PURGE_BATCH:
                raise errors.InvalidRequest(
                    f"instanceBatch.instanceIds holds {len(ids)} ids; the limit is {MAX_PURGE_BATCH}")
            for i, iid in enumerate(ids):
                validation.check_identifier(f"instanceBatch.instanceIds[{i}]", iid)
        elif which == "purgeInstanceFilter":
            f = request.purgeInstanceFilter
            flt = InstanceFilter(statuses=_statuses("purgeInstanceFilter.runtimeStatus", f.runtimeStatus),
                                 created_from_ms=_ms(f, "createdTimeFrom", "purgeInstanceFilter."),
                                 created_to_ms=_ms(f, "createdTimeTo", "purgeInstanceFilter."))
            timeout = None
            if f.HasField("timeout"):
                timeout = validation.duration_seconds("purgeInstanceFilter.timeout", f.timeout)
                if timeout <= 0:
                    raise errors.InvalidRequest("purgeInstanceFilter.timeout must be greater than zero")
        else:
            raise errors.InvalidRequest("one of instanceId, purgeInstanceFilter or instanceBatch is required")
        hub = await self._existing_hub(context)
        if hub is None:
            deleted = 0
        elif which == "purgeInstanceFilter":
            deleted, complete = await self.store.purge_matching(hub, flt, timeout, self._purger(request))
        else:
            deleted = await self._purger(request)(hub, [request.instanceId] if which == "instanceId" else ids)
        return pb.PurgeInstancesResponse(deletedInstanceCount=deleted,
                                         isComplete=wrappers_pb2.BoolValue(value=complete))

    def _purger(self, request: pb.PurgeInstancesRequest):
        """How a purge deletes a batch of ids: with their sub-orchestrations when ``recursive``."""
        if request.recursive:
            return lambda hub, ids: subtree.purge_trees(self.store, hub, ids)
        return self.store.purge_instances

    @rpc
    async def StreamInstanceHistory(self, request: pb.StreamInstanceHistoryRequest, context):
        # Like the reference, executionId and forWorkItemProcessing do not change what is streamed:
        # the store keeps the history of the current execution only.
        validation.check_identifier("instanceId", request.instanceId)
        hub = await self._existing_hub(context)
        events = None if hub is None else await self.store.history_page(hub, request.instanceId, 0, HISTORY_CHUNK)
        if events is None:
            raise errors.InstanceNotFound(request.instanceId)
        start = 0
        while events:
            for chunk in _chunks(events, self.config.reply_bytes):
                await context.write(pb.HistoryChunk(events=[pb.HistoryEvent.FromString(e) for e in chunk]))
            if len(events) < HISTORY_CHUNK:
                return
            start += len(events)
            events = await self.store.history_page(hub, request.instanceId, start, HISTORY_CHUNK) or []


def _chunks(events: list[bytes], budget: int) -> list[list[bytes]]:
    """The events in order, in chunks that each fit ``budget`` bytes (an event alone always goes)."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for event in events:
        if chunks[-1] and size + len(event) + FRAMING_BYTES > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(event)
        size += len(event) + FRAMING_BYTES
    return chunks


def _page_size(what: str, value: int) -> int:
    if value < 0:
        raise errors.InvalidRequest(f"{what} is {value}; it must not be negative (0 means {DEFAULT_PAGE_SIZE})")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _cursor(what: str, token: wrappers_pb2.StringValue) -> Cursor | None:
    return Cursor.decode(token.value, what) if token.value else None


def _statuses(what: str, values) -> frozenset[str]:
    for value in values:
        if value not in _KNOWN_STATUSES:
            raise errors.InvalidRequest(f"{what} holds unknown status {value}")
    return frozenset(status_name(v) for v in values)


def _ms(message, field: str, path: str = "") -> int | None:
    """Epoch ms of an optional timestamp field, rounded up (so ``created_ms >= from`` is exact)."""
    if not message.HasField(field):
        return None
    ts = getattr(message, field)
    validation.check_timestamp(path + field, ts)
    return due_ms(ts)
