"""The metrics the App exports: queue depths and instance counts per hub, promotion counters."""
from __future__ import annotations

import time

from google.protobuf import timestamp_pb2
from prometheus_client import REGISTRY

from scheduler._proto import orchestrator_service_pb2 as pb


def metric(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_depths_and_counts_follow_the_hub(app, stub, hub_name):
    later = timestamp_pb2.Timestamp()
    later.FromNanoseconds(time.time_ns() + 600 * 10**9)
    for iid in ("now-1", "now-2"):
        await stub.StartInstance(pb.CreateInstanceRequest(instanceId=iid, name="Orch"))
    await stub.StartInstance(pb.CreateInstanceRequest(instanceId="later", name="Orch", scheduledStartTimestamp=later))
    await stub.TerminateInstance(pb.TerminateRequest(instanceId="now-2"))

    await app.sample_depths()

    assert metric("dt_ready_entries", hub=hub_name) == 1
    assert metric("dt_due_entries", hub=hub_name) == 1
    assert metric("dt_instances", hub=hub_name, status="PENDING") == 2
    assert metric("dt_instances", hub=hub_name, status="TERMINATED") == 1
    assert metric("dt_instances", hub=hub_name, status="COMPLETED") == 0
    age = metric("dt_ready_oldest_age_seconds", hub=hub_name)
    assert age is not None and 0 <= age < 60


async def test_build_info_names_the_version_revision_and_python(app, monkeypatch):
    import platform
    from importlib import metadata

    from scheduler.app import build_info

    version = metadata.version("dt-redis-scheduler")
    revision = build_info()["revision"]  # what this environment says ("unknown" without DT_BUILD_REVISION)
    assert metric("dt_build_info", version=version, revision=revision, python=platform.python_version()) == 1
    monkeypatch.setenv("DT_BUILD_REVISION", "0123abc")
    assert build_info() == {"version": version, "revision": "0123abc", "python": platform.python_version()}
    monkeypatch.setenv("DT_BUILD_REVISION", "")
    assert build_info()["revision"] == "unknown"
