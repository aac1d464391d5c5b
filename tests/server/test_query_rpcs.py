"""QueryInstances, ListInstanceIds, PurgeInstances and StreamInstanceHistory over a real port."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2

from instance_setup import finish, index_order, set_created
from scheduler.api import queries as rpc_queries
from scheduler.store import keys
from scheduler.store import queries as store_queries
from scheduler._proto import orchestrator_service_pb2 as pb
from server_helpers import PARTITIONS, rpc_error

S = pb.OrchestrationStatus
COMPLETED, FAILED, PENDING = S.Value("ORCHESTRATION_STATUS_COMPLETED"), S.Value("ORCHESTRATION_STATUS_FAILED"), \
    S.Value("ORCHESTRATION_STATUS_PENDING")


def hub_keys(key_prefix: str, hub_name: str) -> keys.HubKeys:
    return keys.HubKeys(key_prefix, hub_name, PARTITIONS)


async def start(stub, ids, hub: str | None = None, **fields) -> None:
    metadata = (("taskhub", hub),) if hub else None
    await asyncio.gather(*(stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch", **fields),
                                              metadata=metadata) for iid in ids))


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def query(**kw) -> pb.QueryInstancesRequest:
    token = kw.pop("token", None)
    q = pb.InstanceQuery(**kw)
    if token is not None:
        q.continuationToken.value = token
    return pb.QueryInstancesRequest(query=q)


async def query_all(stub, page: int, **kw) -> list[list[pb.OrchestrationState]]:
    pages, token = [], None
    while True:
        reply = await stub.QueryInstances(query(maxInstanceCount=page, token=token, **kw))
        pages.append(list(reply.orchestrationState))
        if not reply.HasField("continuationToken"):
            return pages
        token = reply.continuationToken.value


# -- QueryInstances ------------------------------------------------------------------------------

async def test_paging_across_partitions_returns_each_once_in_order_despite_inserts(stub, redis, key_prefix,
                                                                                   hub_name):
    hub = hub_keys(key_prefix, hub_name)
    first = [f"q-{i:02d}" for i in range(21)]
    for i in range(0, 21, 7):
        await start(stub, first[i:i + 7])
    assert {keys.partition_of(i, PARTITIONS) for i in first} == set(range(PARTITIONS))
    seen: list[str] = []
    token = None
    late_batches = 0
    while True:
        reply = await stub.QueryInstances(query(maxInstanceCount=4, token=token))
        seen += [s.instanceId for s in reply.orchestrationState]
        if not reply.HasField("continuationToken"):
            break
        assert len(reply.orchestrationState) == 4
        token = reply.continuationToken.value
        if late_batches < 3:  # inserts between pages
            await start(stub, [f"late-{late_batches}-{n}" for n in range(2)])
            late_batches += 1
    assert len(seen) == len(set(seen)) == 27
    assert seen == await index_order(redis, hub)
    assert set(seen[:21]) == set(first)


async def test_query_filters_by_status_prefix_and_creation_time(stub, redis, key_prefix, hub_name):
    hub = hub_keys(key_prefix, hub_name)
    ids = [f"{p}-{i}" for p in ("x", "y") for i in range(6)]
    await start(stub, ids)
    for n, iid in enumerate(sorted(ids)):
        await set_created(redis, hub, iid, 1_700_000_000_000 + n * 1000)
    await finish(redis, hub, "x-1")
    await finish(redis, hub, "y-4", "FAILED")

    done = await query_all(stub, 1, runtimeStatus=[COMPLETED, FAILED])
    assert [s.instanceId for p in done for s in p] == ["x-1", "y-4"]
    assert [s.orchestrationStatus for p in done for s in p] == [COMPLETED, FAILED]
    pending_y = await query_all(stub, 2, runtimeStatus=[PENDING],
                                instanceIdPrefix=wrappers_pb2.StringValue(value="y-"))
    assert [s.instanceId for p in pending_y for s in p] == ["y-0", "y-1", "y-2", "y-3", "y-5"]
    # x-0..x-5 at +0..+5 s, y-0.. at +6 s..: from inclusive, to exclusive (to just after y-1 is still out of y-2)
    ranged = await query_all(stub, 10, createdTimeFrom=ts(1_700_000_004_000),
                             createdTimeTo=ts(1_700_000_008_000))
    assert [s.instanceId for p in ranged for s in p] == ["x-4", "x-5", "y-0", "y-1"]
    ranged_ns = await stub.QueryInstances(query(createdTimeFrom=timestamp_pb2.Timestamp(
        seconds=1_700_000_003, nanos=1)))  # a nanosecond after x-3's millisecond: x-3 is out
    assert [s.instanceId for s in ranged_ns.orchestrationState][:2] == ["x-4", "x-5"]


async def test_payloads_only_on_request_tags_always(stub):
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="pay", name="Orch",
                                                      input=wrappers_pb2.StringValue(value='"in"'),
                                                      tags={"team": "blue"}))
    [bare] = (await stub.QueryInstances(query())).orchestrationState
    assert not bare.HasField("input") and bare.tags == {"team": "blue"} and bare.name == "Orch"
    [full] = (await stub.QueryInstances(query(fetchInputsAndOutputs=True))).orchestrationState
    assert full.input.value == '"in"' and full.tags == {"team": "blue"}
    assert full.orchestrationStatus == PENDING and full.createdTimestamp.seconds > 0


async def test_default_and_capped_page_sizes(stub, monkeypatch):
    await start(stub, [f"d-{i}" for i in range(5)])
    everything = await stub.QueryInstances(query(maxInstanceCount=2**31 - 1))
    assert len(everything.orchestrationState) == 5 and not everything.HasField("continuationToken")
    monkeypatch.setattr(rpc_queries, "MAX_PAGE_SIZE", 2)
    monkeypatch.setattr(rpc_queries, "DEFAULT_PAGE_SIZE", 3)
    capped = await stub.QueryInstances(query(maxInstanceCount=2**31 - 1))
    assert len(capped.orchestrationState) == 2 and capped.HasField("continuationToken")
    default = await stub.QueryInstances(query())
    assert len(default.orchestrationState) == 2  # the default is capped too
    monkeypatch.setattr(rpc_queries, "MAX_PAGE_SIZE", 10)
    default = await stub.QueryInstances(query())
    assert len(default.orchestrationState) == 3 and default.HasField("continuationToken")


async def test_query_of_a_hub_that_does_not_exist_is_empty(stub, redis, key_prefix):
    await start(stub, ["mine"])
    reply = await stub.QueryInstances(query(), metadata=(("taskhub", "no-such-hub"),))
    assert list(reply.orchestrationState) == [] and not reply.HasField("continuationToken")
    assert not await redis.exists(keys.meta_key(key_prefix, "no-such-hub"))


@pytest.mark.parametrize("request_, field", [
    (query(maxInstanceCount=-1), "query.maxInstanceCount"),
    (query(token="not-a-token"), "query.continuationToken"),
    (query(runtimeStatus=[42]), "query.runtimeStatus"),
    (query(createdTimeFrom=timestamp_pb2.Timestamp(seconds=-10**12)), "query.createdTimeFrom"),
    (query(instanceIdPrefix=wrappers_pb2.StringValue(value="a\x00")), "query.instanceIdPrefix"),
])
async def test_query_rejects_bad_input(stub, request_, field):
    message = await rpc_error(stub.QueryInstances(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in message


# -- ListInstanceIds -----------------------------------------------------------------------------

async def test_list_ids_lists_terminal_instances_by_completion_range_with_paging(stub, redis, key_prefix,
                                                                                 hub_name):
    hub = hub_keys(key_prefix, hub_name)
    ids = [f"l-{i:02d}" for i in range(12)]
    await start(stub, ids)
    for n, iid in enumerate(ids):
        await set_created(redis, hub, iid, 50_000 + n)
        if n % 4:  # l-00, 04, 08 stay pending
            await finish(redis, hub, iid, "FAILED" if n % 4 == 3 else "COMPLETED", 1_700_000_000_000 + n)
    got, key = [], None
    while True:
        req = pb.ListInstanceIdsRequest(pageSize=2)
        if key is not None:
            req.lastInstanceKey.value = key
        reply = await stub.ListInstanceIds(req)
        got += list(reply.instanceIds)
        if not reply.HasField("lastInstanceKey"):
            break
        assert len(reply.instanceIds) == 2
        key = reply.lastInstanceKey.value
    assert got == [i for n, i in enumerate(ids) if n % 4]
    failed = await stub.ListInstanceIds(pb.ListInstanceIdsRequest(runtimeStatus=[FAILED]))
    assert list(failed.instanceIds) == ["l-03", "l-07", "l-11"]
    pending = await stub.ListInstanceIds(pb.ListInstanceIdsRequest(runtimeStatus=[PENDING]))
    assert list(pending.instanceIds) == []  # like the reference: terminal instances only
    ranged = await stub.ListInstanceIds(pb.ListInstanceIdsRequest(completedTimeFrom=ts(1_700_000_000_005),
                                                                  completedTimeTo=ts(1_700_000_000_010)))
    assert list(ranged.instanceIds) == ["l-05", "l-06", "l-07", "l-09"]


@pytest.mark.parametrize("request_, field", [
    (pb.ListInstanceIdsRequest(pageSize=-3), "pageSize"),
    (pb.ListInstanceIdsRequest(lastInstanceKey=wrappers_pb2.StringValue(value="x|y")), "lastInstanceKey"),
    (pb.ListInstanceIdsRequest(runtimeStatus=[77]), "runtimeStatus"),
    (pb.ListInstanceIdsRequest(completedTimeTo=timestamp_pb2.Timestamp(seconds=1, nanos=-1)), "completedTimeTo"),
])
async def test_list_ids_rejects_bad_input(stub, request_, field):
    message = await rpc_error(stub.ListInstanceIds(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in message


# -- PurgeInstances ------------------------------------------------------------------------------

async def test_purge_one_instance_only_when_terminal(stub, redis, key_prefix, hub_name):
    hub = hub_keys(key_prefix, hub_name)
    await start(stub, ["done", "busy"])
    await finish(redis, hub, "done", "TERMINATED")
    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="busy", recursive=True))
    assert reply.deletedInstanceCount == 0 and reply.isComplete.value is True  # skipped, as the reference does
    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="done", isOrchestration=True))
    assert reply.deletedInstanceCount == 1
    got = await stub.GetInstance(pb.GetInstanceRequest(instanceId="done"))
    assert not got.exists
    assert (await stub.GetInstance(pb.GetInstanceRequest(instanceId="busy"))).exists
    assert (await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="done"))).deletedInstanceCount == 0
    assert await index_order(redis, hub) == ["busy"]


async def test_purge_batch_and_filter_leave_other_hubs_and_open_instances(stub, redis, key_prefix, hub_name):
    hub = hub_keys(key_prefix, hub_name)
    other_name = hub_name + "-o"
    other = hub_keys(key_prefix, other_name)
    ids = [f"f-{i}" for i in range(8)]
    await start(stub, ids)
    await start(stub, ids, hub=other_name)
    for n, iid in enumerate(ids):
        await set_created(redis, hub, iid, 60_000 + n)
        await set_created(redis, other, iid, 60_000 + n)
        if n != 3:
            await finish(redis, hub, iid, "FAILED" if n % 2 else "COMPLETED")
            await finish(redis, other, iid, "FAILED" if n % 2 else "COMPLETED")
    batch = await stub.PurgeInstances(pb.PurgeInstancesRequest(
        instanceBatch=pb.InstanceBatch(instanceIds=["f-0", "f-3", "f-0", "nope"])))
    assert batch.deletedInstanceCount == 1
    by_filter = await stub.PurgeInstances(pb.PurgeInstancesRequest(purgeInstanceFilter=pb.PurgeInstanceFilter(
        runtimeStatus=[FAILED, PENDING], createdTimeFrom=ts(60_001), createdTimeTo=ts(60_007))))
    assert by_filter.deletedInstanceCount == 2 and by_filter.isComplete.value is True  # f-1, f-5
    everything = await stub.PurgeInstances(pb.PurgeInstancesRequest(purgeInstanceFilter=pb.PurgeInstanceFilter()))
    assert everything.deletedInstanceCount == 4  # f-2, f-4, f-6, f-7
    assert await index_order(redis, hub) == ["f-3"]
    assert await index_order(redis, other) == ids
    theirs = await stub.PurgeInstances(pb.PurgeInstancesRequest(purgeInstanceFilter=pb.PurgeInstanceFilter()),
                                       metadata=(("taskhub", other_name),))
    assert theirs.deletedInstanceCount == 7


@pytest.mark.parametrize("request_, text", [
    (pb.PurgeInstancesRequest(), "one of instanceId, purgeInstanceFilter or instanceBatch"),
    (pb.PurgeInstancesRequest(instanceId="x" * 300), "instanceId"),
    (pb.PurgeInstancesRequest(instanceBatch=pb.InstanceBatch(instanceIds=["ok", "b\x01"])),
     "instanceBatch.instanceIds[1]"),
    (pb.PurgeInstancesRequest(purgeInstanceFilter=pb.PurgeInstanceFilter(runtimeStatus=[99])),
     "purgeInstanceFilter.runtimeStatus"),
    (pb.PurgeInstancesRequest(purgeInstanceFilter=pb.PurgeInstanceFilter(
        createdTimeTo=timestamp_pb2.Timestamp(seconds=10**13))), "purgeInstanceFilter.createdTimeTo"),
])
async def test_purge_rejects_bad_input(stub, request_, text):
    message = await rpc_error(stub.PurgeInstances(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert text in message


async def test_purge_in_a_hub_that_does_not_exist_deletes_nothing(stub, redis, key_prefix):
    reply = await stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="x"), metadata=(("taskhub", "ghost"),))
    assert reply.deletedInstanceCount == 0
    assert not await redis.exists(keys.meta_key(key_prefix, "ghost"))


# -- StreamInstanceHistory -----------------------------------------------------------------------

async def test_history_of_an_unknown_instance_is_not_found(stub):
    call = stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId="nobody"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        [chunk async for chunk in call]
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nobody" in e.value.details()


async def test_history_of_a_never_dispatched_instance_is_empty(stub):
    await start(stub, ["fresh"])
    chunks = [c async for c in stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId="fresh"))]
    assert chunks == []


@pytest.mark.parametrize("count, sizes", [(250, [100, 100, 50]), (200, [100, 100]), (7, [7])])
async def test_long_history_streams_in_chunks_of_100(stub, redis, key_prefix, hub_name, count, sizes):
    hub = hub_keys(key_prefix, hub_name)
    await start(stub, ["long"])
    events = [pb.HistoryEvent(eventId=i, timerFired=pb.TimerFiredEvent(timerId=i)) for i in range(count)]
    await redis.rpush(hub.for_instance("long").history("long"), *(e.SerializeToString() for e in events))
    chunks = [c async for c in stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(
        instanceId="long", executionId=wrappers_pb2.StringValue(value="ignored")))]
    assert [len(c.events) for c in chunks] == sizes
    assert [e for c in chunks for e in c.events] == events


# -- bounds --------------------------------------------------------------------------------------

async def test_task_hub_names_may_name_only_the_calls_hub(stub, hub_name):
    await start(stub, ["h-1"])
    same = query(taskHubNames=[wrappers_pb2.StringValue(value=hub_name)])
    assert [s.instanceId for s in (await stub.QueryInstances(same)).orchestrationState] == ["h-1"]
    other = query(taskHubNames=[wrappers_pb2.StringValue(value=hub_name), wrappers_pb2.StringValue(value="other")])
    details = await rpc_error(stub.QueryInstances(other), grpc.StatusCode.INVALID_ARGUMENT)
    assert "taskHubNames[1]" in details and "'other'" in details


async def test_a_page_that_spends_its_budget_is_short_and_carries_a_token(stub, monkeypatch):
    monkeypatch.setattr(store_queries, "MAX_EXAMINED", 10)
    ids = [f"b-{i:02d}" for i in range(30)]
    await start(stub, ids)
    pages = await query_all(stub, 100, instanceIdPrefix=wrappers_pb2.StringValue(value="b-2"))
    assert len(pages) > 1 and [] in pages[:-1]
    assert sorted(s.instanceId for p in pages for s in p) == ids[20:]
