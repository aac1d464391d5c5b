"""The SDK's scheduled tasks (``durabletask.scheduled``: a schedule entity that re-arms itself with
delayed signals and starts the target orchestration at each run) against this service ("ours") and the
SDK's in-memory backend ("reference").

Each run of a schedule is an orchestration whose id embeds its scheduled time (``<schedule>-<iso time>``);
it signals a ``tally`` entity with its id and its start (``ctx.current_utc_datetime``), so the test sees
every run once per execution: a run started twice would show twice. For ours the runs are held to their
times: never before, a small lag (printed; asserted under 1 s), none missed, none twice. The reference
runs delayed signals on timer threads (README), so its timing is not asserted.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task
from durabletask.entities import EntityContext, EntityInstanceId
from durabletask.scheduled import (AsyncScheduledTaskClient, ScheduleCreationOptions, ScheduledTaskClient,
                                   ScheduleNotFoundError, ScheduleQuery, ScheduleStatus, ScheduleUpdateOptions)

from e2e_helpers import poll, sdk_entities_on, serve, stays

pytestmark = pytest.mark.e2e

SECOND = timedelta(seconds=1)


def now() -> datetime:
    return datetime.now(timezone.utc)


def job(ctx: task.OrchestrationContext, payload: dict):
    started = ctx.current_utc_datetime.replace(tzinfo=timezone.utc)  # the SDK's clock is naive UTC
    ctx.signal_entity(EntityInstanceId("tally", payload["sid"]), "hit",
                      {"iid": ctx.instance_id, "at": started.isoformat(), "v": payload.get("v")})
    return payload.get("v")


def tally(ctx: EntityContext, hit: dict):
    ctx.set_state([*ctx.get_state(list, []), hit])


@pytest.fixture(params=["ours", "reference"])
def sched(request, replicas):
    with sdk_entities_on(serve(request.param, request, replicas), request.param, orchestrators=(job,),
                         entities=(tally,), scheduled=True) as c:
        c.schedules = ScheduledTaskClient(c, operation_timeout=30)
        yield c


class Run:
    def __init__(self, sid: str, hit: dict) -> None:
        self.iid, self.v = hit["iid"], hit["v"]
        self.due = datetime.fromisoformat(hit["iid"][len(sid) + 1:])  # the time the schedule entity ran it for
        self.started = datetime.fromisoformat(hit["at"])

    @property
    def lag(self) -> timedelta:
        return self.started - self.due


def runs(c, sid: str) -> list[Run]:
    meta = c.get_entity(EntityInstanceId("tally", sid))
    return [Run(sid, hit) for hit in (meta.get_typed_state() or [])] if meta else []


def until_runs(c, sid: str, count: int, timeout: float = 20, **match) -> list[Run]:
    """Wait for ``count`` runs (whose fields equal ``match``)."""
    def enough():
        got = sorted((r for r in runs(c, sid) if all(getattr(r, k) == v for k, v in match.items())),
                     key=lambda r: r.due)
        return got if len(got) >= count else None
    return poll(enough, timeout, interval=0.05, what=f"{count} runs of {sid} {match or ''}")


def check_timing(c, all_runs: list[Run], interval: timedelta, start: datetime | None = None) -> None:
    """Every run once; consecutive runs one interval apart (from ``start`` if given); for ours each run
    starts at its time, never before, within 1 s."""
    ids = [r.iid for r in all_runs]
    assert len(ids) == len(set(ids)), f"a run started twice: {ids}"
    dues = sorted(r.due for r in all_runs)
    assert all(b - a == interval for a, b in zip(dues, dues[1:])), f"missed or extra runs: {dues}"
    if start is not None:
        assert dues[0] == start, (dues[0], start)
    if c.backend == "reference":
        return
    lags = sorted(r.lag.total_seconds() * 1000 for r in all_runs)
    print(f"\n{c.backend}: {len(lags)} runs, start lag ms min {lags[0]:.1f} max {lags[-1]:.1f}")
    assert lags[0] >= 0, f"a run started {-lags[0]:.1f} ms before its time"
    assert lags[-1] < 1000, f"a run started {lags[-1]:.1f} ms after its time"


def job_ids(c, sid: str) -> set[str]:
    states = c.get_all_orchestration_states(client.OrchestrationQuery(instance_id_prefix=f"{sid}-"))
    return {s.instance_id for s in states}


def job_dues(c, sid: str) -> list[datetime]:
    """The times of the runs the schedule has started (their orchestrations exist), reported or not."""
    return sorted(datetime.fromisoformat(iid[len(sid) + 1:]) for iid in job_ids(c, sid))


def test_a_schedule_runs_at_each_interval_from_its_start_and_stops_when_deleted(sched):
    sid, start = "every-second", now() + 1.2 * SECOND
    options = ScheduleCreationOptions(schedule_id=sid, orchestration_name="job", interval=SECOND,
                                      orchestration_input={"sid": sid, "v": 1}, start_at=start)
    handle = sched.schedules.create_schedule(options)
    described = handle.describe()
    assert (described.schedule_id, described.status, described.interval) == (sid, ScheduleStatus.ACTIVE, SECOND)
    assert (described.orchestration_name, described.orchestration_input, described.start_at) == \
        ("job", {"sid": sid, "v": 1}, start)
    assert not runs(sched, sid), "ran before its start time"
    until_runs(sched, sid, 4)
    handle.delete()
    with pytest.raises(ScheduleNotFoundError):
        handle.describe()
    assert sched.schedules.get_schedule(sid) is None
    # Runs already on their way finish; then nothing more starts.
    poll(lambda: len(runs(sched, sid)) == len(job_ids(sched, sid)), 10, what="the last runs to report")
    count = len(job_ids(sched, sid))
    stays(lambda: len(job_ids(sched, sid)) == count, 2.5, interval=0.1, what="no run after the deletion")
    check_timing(sched, runs(sched, sid), SECOND, start)


def test_first_runs_without_a_start_time_and_when_late_with_or_without_starting_at_once(sched):
    interval = 2 * SECOND
    past = now() - 10.3 * SECOND
    before = now()
    for sid, start_at, at_once in (("plain", None, False), ("late-now", past, True), ("late-wait", past, False)):
        sched.schedules.create_schedule(ScheduleCreationOptions(
            schedule_id=sid, orchestration_name="job", interval=interval, orchestration_input={"sid": sid},
            start_at=start_at, start_immediately_if_late=at_once))
    after = now()
    plain = until_runs(sched, "plain", 2)
    # no start time: the creation time is the start, the first run is one interval later
    assert before + interval <= plain[0].due <= after + interval, (before, plain[0].due, after)
    check_timing(sched, plain, interval)
    now_run, *aligned = until_runs(sched, "late-now", 3)
    assert (now_run.due - past) % interval != timedelta(0), "late, started at once: not a slot of its grid"
    assert before <= now_run.due <= after + 3 * SECOND, "late, started at once: the first run is at its creation"
    assert all((r.due - past) % interval == timedelta(0) for r in aligned), "then on the grid of its start"
    check_timing(sched, aligned, interval)
    waiting = until_runs(sched, "late-wait", 2)
    assert all((r.due - past) % interval == timedelta(0) for r in waiting)
    assert waiting[0].due > after, "late without starting at once: the next slot of its grid"
    check_timing(sched, waiting, interval)
    if sched.backend == "ours":
        assert now_run.lag >= timedelta(0)


def test_schedules_are_listed_by_id_prefix_and_status(sched):
    later = now() + timedelta(hours=1)
    for sid in ("list-a-1", "list-a-2", "list-b-1"):
        sched.schedules.create_schedule(ScheduleCreationOptions(
            schedule_id=sid, orchestration_name="job", interval=timedelta(hours=1),
            orchestration_input={"sid": sid}, start_at=later))
    sched.schedules.get_schedule_client("list-a-2").pause()

    def listed(**query) -> list[str]:
        return sorted(d.schedule_id for d in sched.schedules.list_schedules(ScheduleQuery(**query)))

    # A schedule with operations waiting is left out (it is "transient"): wait for each to settle.
    poll(lambda: listed(schedule_id_prefix="list-") == ["list-a-1", "list-a-2", "list-b-1"], 10,
         what="the three schedules to be listed")
    assert listed(schedule_id_prefix="list-a-") == ["list-a-1", "list-a-2"]
    assert listed(status=ScheduleStatus.PAUSED) == ["list-a-2"]
    assert listed(schedule_id_prefix="list-", status=ScheduleStatus.ACTIVE) == ["list-a-1", "list-b-1"]
    assert listed(schedule_id_prefix="nothing-") == []
    assert listed(page_size=1, schedule_id_prefix="list-") == ["list-a-1", "list-a-2", "list-b-1"]
    poll(lambda: sched.schedules.get_schedule("list-a-1").next_run_at == later, 10, what="the next run time")
    assert sched.schedules.get_schedule("list-a-1").last_run_at is None
    assert sched.schedules.get_schedule("list-a-2").next_run_at is None


def test_updating_the_interval_and_input_changes_the_runs_that_follow(sched):
    sid, start = "updated", now() + SECOND
    handle = sched.schedules.create_schedule(ScheduleCreationOptions(
        schedule_id=sid, orchestration_name="job", interval=3 * SECOND, orchestration_input={"sid": sid, "v": 1},
        start_at=start))
    first = until_runs(sched, sid, 1)
    assert (first[0].v, first[0].due) == (1, start)
    updated_at = now()
    handle.update(ScheduleUpdateOptions(interval=SECOND, orchestration_input={"sid": sid, "v": 2}))
    described = handle.describe()
    assert (described.interval, described.orchestration_input) == (SECOND, {"sid": sid, "v": 2})
    second = until_runs(sched, sid, 3, v=2)
    handle.delete()
    assert all(r.due > updated_at for r in second), "a run for a time before the update carries its input"
    assert all((r.due - start) % SECOND == timedelta(0) for r in second), "on the grid of the start time"
    assert [r.v for r in runs(sched, sid) if r.due < second[0].due] == [1], "the old interval ran on"
    check_timing(sched, first, 3 * SECOND, start)
    check_timing(sched, second, SECOND)


def test_a_paused_schedule_does_not_run_until_it_is_resumed(sched):
    sid = "pausing"
    handle = sched.schedules.create_schedule(ScheduleCreationOptions(
        schedule_id=sid, orchestration_name="job", interval=SECOND, orchestration_input={"sid": sid},
        start_at=now() + SECOND))
    until_runs(sched, sid, 2)
    handle.pause()
    paused_at = now()
    assert handle.describe().status == ScheduleStatus.PAUSED
    stays(lambda: all(due <= paused_at for due in job_dues(sched, sid)), 2.5, interval=0.1,
          what="no run while paused")
    before_resume = until_runs(sched, sid, len(job_dues(sched, sid)))
    resumed_at = now()
    handle.resume()
    assert handle.describe().status == ScheduleStatus.ACTIVE
    after = until_runs(sched, sid, len(before_resume) + 2)
    handle.delete()
    assert not [r.due for r in after if paused_at < r.due < resumed_at], "a run for a time while it was paused"
    resumed = [r for r in after if r.due >= resumed_at]
    assert len(resumed) >= 2
    check_timing(sched, before_resume, SECOND)
    check_timing(sched, resumed, SECOND)


def test_a_schedule_with_a_fixed_orchestration_id_runs_it_again_at_each_interval(sched):
    # The schedule entity starts every run under the one id; the reference replaces the ended run.
    sid = "fixed"
    handle = sched.schedules.create_schedule(ScheduleCreationOptions(
        schedule_id=sid, orchestration_name="job", interval=SECOND, orchestration_input={"sid": sid},
        orchestration_instance_id="fixed-run", start_at=now() + SECOND))

    def hits() -> list[dict]:
        meta = sched.get_entity(EntityInstanceId("tally", sid))
        return (meta.get_typed_state() or []) if meta else []

    got = poll(lambda: len(h := hits()) >= 3 and h, 15, interval=0.05, what="three runs under the fixed id")
    handle.delete()
    assert {h["iid"] for h in got} == {"fixed-run"} and len({h["at"] for h in got}) == len(got)


async def test_the_async_schedule_client_runs_each_operation(sched):
    sid = "async-ops"
    ac = client.AsyncTaskHubGrpcClient(host_address=sched.address)
    schedules = AsyncScheduledTaskClient(ac, operation_timeout=30)

    async def listed(**query) -> list[str]:  # polled: a schedule with operations waiting is left out
        deadline = time.monotonic() + 10
        while not (found := [d.schedule_id for d in await schedules.list_schedules(ScheduleQuery(**query))]):
            assert time.monotonic() < deadline, f"no schedule listed for {query}"
            await asyncio.sleep(0.05)
        return found

    try:
        start = now() + SECOND
        handle = await schedules.create_schedule(ScheduleCreationOptions(
            schedule_id=sid, orchestration_name="job", interval=SECOND, orchestration_input={"sid": sid, "v": 1},
            start_at=start))
        assert (await handle.describe()).status == ScheduleStatus.ACTIVE
        assert await listed(schedule_id_prefix="async-", status=ScheduleStatus.ACTIVE) == [sid]
        first = await asyncio.to_thread(until_runs, sched, sid, 1)
        assert (first[0].v, first[0].due) == (1, start)
        await handle.pause()
        assert (await handle.describe()).status == ScheduleStatus.PAUSED
        assert await listed(schedule_id_prefix="async-", status=ScheduleStatus.PAUSED) == [sid]
        await handle.update(ScheduleUpdateOptions(orchestration_input={"sid": sid, "v": 2}))
        assert (await handle.describe()).orchestration_input == {"sid": sid, "v": 2}
        resumed_at = now()
        await handle.resume()
        second = await asyncio.to_thread(until_runs, sched, sid, 1, v=2)
        assert second[0].due >= resumed_at - timedelta(milliseconds=1)
        await handle.delete()
        assert await schedules.get_schedule(sid) is None
        check_timing(sched, first, SECOND, start)
        check_timing(sched, second, SECOND)
    finally:
        await ac.close()
