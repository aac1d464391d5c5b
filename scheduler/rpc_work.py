"""The worker protocol: GetWorkItems and the completion RPCs (mixed into :class:`scheduler.server.Servicer`).

Completion tokens name the hub and instance they claim, so any replica accepts a
completion or an abandon; the token must still be the instance's current claim.
"""
from __future__ import annotations

from . import convert, errors, relay, subtree
from ._proto import orchestrator_service_pb2 as pb
from .dispatcher import WorkStream, name_filter
from .keys import HubKeys, queue_of
from .rpc_common import rpc
from .store_activities import activity_instance, activity_item


def _parse_token(token: str, expected_kind: str) -> tuple[str, str]:
    """(hub, claimed thing) of a completion token: "<hub>|<p>|<kind>|<instance id or activity item>|<random>"."""
    hub, sep1, rest = token.partition("|")
    _, sep2, rest = rest.partition("|")
    kind, sep3, rest = rest.partition("|")
    claimed, sep4, _ = rest.rpartition("|")
    if not (sep1 and sep2 and sep3 and sep4) or kind != expected_kind or not claimed:
        what = "an orchestration" if expected_kind == "o" else "an activity"
        raise errors.InvalidRequest(f"completionToken {token!r} is not a token this service issued for {what}")
    return hub, claimed


class WorkRPCs:
    """Uses the Servicer's ``store``, ``config``, ``_hub``, ``work_streams`` (this replica's open streams) and
    ``claims`` (their held orchestration claims: token -> instance fields at the claim)."""

    def work_available(self, hub_name: str, key: str = "") -> None:
        """A queue of the hub stopped being empty (``key``: which one; any other text: maybe every
        queue): wake this replica's streams to look there."""
        queue = queue_of(key)
        for stream in self.work_streams.get(hub_name, ()):
            stream.look(*queue) if queue else stream.look_everywhere()

    def offer_work(self, hub_name: str, queue: str, items: list[str]) -> None:
        """Work a request on this replica just queued ("ready" instance ids or "activities" items): offer it
        to the least busy of this replica's streams that take any work, which claims it at once."""
        streams = [s for s in self.work_streams.get(hub_name, ()) if s.takes_offers]
        if streams and items:
            stream = min(streams, key=lambda s: len(s.held) + len(s.held_activities))
            for item in items:
                stream.offer(queue, item)

    @rpc
    async def GetWorkItems(self, request: pb.GetWorkItemsRequest, context):
        hub = await self._hub(context)
        filters = request.workItemFilters if request.HasField("workItemFilters") else None
        stream = WorkStream(self.store, hub, self.config.lease_seconds, self.config.health_ping_seconds,
                            max(request.maxConcurrentOrchestrationWorkItems, 0),
                            max(request.maxConcurrentActivityWorkItems, 0),
                            None if filters is None else name_filter(filters.orchestrations),
                            None if filters is None else name_filter(filters.activities), self.claims)
        self.work_streams[hub.hub].add(stream)
        try:
            await stream.run(context.write)
        finally:
            self.work_streams[hub.hub].discard(stream)

    async def _token_hub(self, token: str, instance_id: str, kind: str = "o") -> tuple[HubKeys, str]:
        hub_name, claimed = _parse_token(token, kind)
        token_instance = claimed.split("\n", 1)[0]
        if instance_id and instance_id != token_instance:
            raise errors.InvalidRequest(
                f"instanceId '{instance_id}' does not match the completion token (issued for '{token_instance}')")
        hub = self.store.cached_hub(hub_name) or await self.store.find_hub(hub_name)
        if hub is None:
            raise errors.LeaseLost(token_instance)
        return hub, claimed

    def _finished(self, hub: HubKeys, instance_id: str) -> None:
        for stream in self.work_streams.get(hub.hub, ()):
            if instance_id in stream.held:
                stream.done_with(instance_id)

    @rpc
    async def CompleteOrchestratorTask(self, request: pb.OrchestratorResponse, context):
        hub, instance_id = await self._token_hub(request.completionToken, request.instanceId)
        h = self.claims.pop(request.completionToken, None)  # claimed through this replica: no read needed
        if h is None:
            h = await self.store.get_instance(hub, instance_id)
            if h is None:
                raise errors.LeaseLost(instance_id)
        execution_id = h.get("execution_id", b"").decode()
        episode = convert.episode_result(request, instance_id, execution_id, h["name"].decode())
        custom = request.customStatus.value if request.HasField("customStatus") else None
        if episode.next_execution is not None:
            if "start_event" not in h:  # the claim's fields do not hold it
                h = await self.store.get_instance(hub, instance_id)
                if h is None:
                    raise errors.LeaseLost(instance_id)
            events = convert.continue_as_new_events(request, h["start_event"], convert.new_id())
            next_id = pb.HistoryEvent.FromString(events[0]).executionStarted.orchestrationInstance.executionId.value
            await self.store.continue_as_new(hub, instance_id, request.completionToken, next_id, events, custom)
            self._finished(hub, instance_id)
            return pb.CompleteTaskResponse()
        limit = self.config.max_history_events
        try:
            await self._complete(hub, instance_id, request.completionToken, h, episode, custom, limit)
        except errors.HistoryLimitExceeded as exc:  # nothing was written: end it with a clear failure instead
            await self._complete(hub, instance_id, request.completionToken, h,
                                 convert.history_limit_failure(limit, exc.would_be), custom, None)
        self._finished(hub, instance_id)
        return pb.CompleteTaskResponse()

    async def _complete(self, hub: HubKeys, instance_id: str, token: str, h: dict[str, bytes],
                        episode: convert.Episode, custom: str | None, max_history: int | None) -> None:
        execution_id = h.get("execution_id", b"").decode()
        activities = [(activity_item(instance_id, execution_id, task_id), payload)
                      for task_id, payload in episode.activities]
        notify = convert.parent_notification(h, episode)
        messages = episode.outbox + ([notify] if notify else [])
        if episode.status == "TERMINATED":
            messages += await self._recursive_termination(hub, instance_id, execution_id, h, episode)
        await self.store.complete_orchestration(hub, instance_id, token, episode.events, episode.status,
                                                episode.output, episode.failure, custom, activities,
                                                episode.timers, [relay.message(*m) for m in messages], max_history)
        self.offer_work(hub.hub, "activities", [item for item, _ in activities])
        if episode.status is not None:
            self.notifier.status_changed(hub.hub, instance_id)

    async def _recursive_termination(self, hub: HubKeys, instance_id: str, execution_id: str,
                                     h: dict[str, bytes], episode: convert.Episode) -> list[tuple[str, str, str, bytes]]:
        """Outbox messages terminating the children that have not ended, when the episode ended the
        instance because of a recursive ExecutionTerminated event (see :mod:`scheduler.subtree`)."""
        history, delivered = await self.store.episode_events(hub, instance_id, int(h.get("claimed_n", b"0")))
        terminated = subtree.recursive_termination(delivered)
        if terminated is None:
            return []
        children = subtree.open_children([*history, *delivered, *episode.events])
        return subtree.termination_messages(execution_id, children, terminated)

    @rpc
    async def CompleteActivityTask(self, request: pb.ActivityResponse, context):
        hub, item = await self._token_hub(request.completionToken, request.instanceId, "a")
        await self.store.complete_activity(hub, item, request.completionToken, convert.activity_result(request))
        self._finished_activity(hub, item)
        self.offer_work(hub.hub, "ready", [activity_instance(item)])  # its orchestration has a new event
        return pb.CompleteTaskResponse()

    @rpc
    async def AbandonTaskActivityWorkItem(self, request: pb.AbandonActivityTaskRequest, context):
        hub, item = await self._token_hub(request.completionToken, "", "a")
        if not await self.store.release_activity(hub, item, request.completionToken):
            raise errors.LeaseLost(activity_instance(item))
        self._finished_activity(hub, item)
        return pb.AbandonActivityTaskResponse()

    def _finished_activity(self, hub: HubKeys, item: str) -> None:
        for stream in self.work_streams.get(hub.hub, ()):
            if item in stream.held_activities:
                stream.done_with_activity(item)

    @rpc
    async def AbandonTaskOrchestratorWorkItem(self, request: pb.AbandonOrchestrationTaskRequest, context):
        hub, instance_id = await self._token_hub(request.completionToken, "")
        if not await self.store.release_orchestration(hub, instance_id, request.completionToken):
            raise errors.LeaseLost(instance_id)
        self._finished(hub, instance_id)
        return pb.AbandonOrchestrationTaskResponse()
