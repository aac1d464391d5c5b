"""Dapr Workflow's SDK (durabletask-dapr, in its own venv) against ``scheduler serve --dapr-port``; the
official SDK on the same replica's own port, at the same time, where the two meet."""
from __future__ import annotations

import hashlib
import json
import secrets

import pytest
from durabletask import client, task, worker

from dapr_helpers import stop
from dashboard_browser import get_json
from scheduler.testing import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def both(replicas):
    """One replica serving our port and the Dapr port."""
    server = replicas.start("--dapr-port", "0")
    assert server.dapr_address is not None
    return server


def test_activities_carry_their_task_execution_id(dapr, both):
    result = dapr.run("activities", both.dapr_address)
    assert result["status"] == "COMPLETED"
    first, second = result["output"]  # what each activity saw as its taskExecutionId
    assert first and second and first != second
    assert result["scheduled"] == [first, second]  # the TaskScheduled events keep them
    assert result["completed"] == [first, second]  # and the results answer with them


def test_the_dashboard_shows_dapr_instances_under_their_own_entry(dapr, replicas, hub_name):
    port = free_port()
    server = replicas.start("--dapr-port", "0", "--dashboard-port", str(port))
    iid = dapr.run("activities", server.dapr_address)["instanceId"]
    url = f"http://127.0.0.1:{port}"
    assert get_json(f"{url}/api/hubs")[1] == {"hubs": [hub_name], "daprHubs": [hub_name]}
    status, page = get_json(f"{url}/api/instances?flavour=dapr")
    assert status == 200 and [(i["id"], i["status"]) for i in page["instances"]] == [(iid, "COMPLETED")]
    assert get_json(f"{url}/api/instances")[1]["instances"] == []  # our flavour's entry: none of them
    status, one = get_json(f"{url}/api/instances/{iid}?flavour=dapr")
    assert status == 200 and one["instance"]["name"] == "two_activities"
    assert [(b["name"], b["outcome"]) for b in one["timeline"]["bars"]] == [("whoami", "completed")] * 2


def test_timers_sub_orchestrations_and_events(dapr, both):
    result = dapr.run("flow", both.dapr_address)
    assert result["status"] == "COMPLETED"
    assert result["output"] == [42, "went"]
    for kind in ("timerCreated", "timerFired", "subOrchestrationInstanceCreated",
                 "subOrchestrationInstanceCompleted", "eventRaised", "executionCompleted"):
        assert kind in result["events"]


def test_suspend_resume_terminate_and_purge_with_force(dapr, both):
    seen = dapr.run("lifecycle", both.dapr_address)
    assert seen == {"suspended": "SUSPENDED", "resumed": "RUNNING", "terminated": "TERMINATED", "purged": 1,
                    "after_purge": None, "purge_running": 0, "forced": 1, "after_force": None}


def test_versions_and_patches_are_kept_and_a_missing_version_stalls(dapr, both):
    result = dapr.run("versioning", both.dapr_address)
    assert result["versions"] == ["v2"] and result["patches"] == [["p1"]]  # the first episode's record
    assert result["stalled"]  # the v1-only worker stalled it: STALLED, with an executionStalled event
    assert result["status"] == "COMPLETED"
    assert result["output"] == {"patched": True, "version": "v2"}  # replayed with the patch it had met


def test_list_instance_ids_pages_through_every_instance(dapr, both):
    result = dapr.run("list_ids", both.dapr_address, count=5)
    assert sorted(result["listed"]) == sorted(result["started"])
    assert result["pages"] >= 3
    assert result["history_of_unknown"] == "NOT_FOUND"


def test_rerun_workflow_from_event(dapr, both):
    out = dapr.run("rerun", both.dapr_address)
    assert out["source"] == [2, 3]
    assert out["from_second"] == [2, 11]  # the first activity's result kept, the second ran again on "10"
    assert out["from_first"] == [2, 3]
    assert out["new_id_generated"]
    assert (out["running"], out["no_such_event"], out["unknown"]) == \
        ("FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND")


def test_reuse_policy_actions(dapr, both):
    out = dapr.run("reuse", both.dapr_address)
    assert out == {"none": "ALREADY_EXISTS", "error": "ALREADY_EXISTS", "ignore": "OK", "ignore_kept": True,
                   "terminate_unlisted": "ALREADY_EXISTS", "terminate": "OK", "terminate_replaced": True,
                   "status_after": "PENDING"}


def same(ctx: task.OrchestrationContext, _):  # the official SDK names it after the function: "same"
    return "official"


def test_each_worker_gets_only_its_own_flavour(dapr, both):
    """A Dapr worker and an official SDK worker on one replica, both serving an orchestration named ``same``:
    every instance is run by a worker of the SDK it was started with, and each port sees only its own."""
    official = worker.TaskHubGrpcWorker(host_address=both.address)
    official.add_orchestrator(same)
    official.start()
    dapr_worker = None
    try:
        dapr_worker = dapr.start("worker_same", both.dapr_address)
        c = client.TaskHubGrpcClient(host_address=both.address)
        ours = [c.schedule_new_orchestration("same") for _ in range(5)]
        theirs = dapr.run("run_same", both.dapr_address, count=5)
        assert theirs["outputs"] == ["dapr"] * 5
        assert [json.loads(c.wait_for_orchestration_completion(i, timeout=60).serialized_output) for i in ours] \
            == ["official"] * 5
        assert c.get_orchestration_state(theirs["ids"][0]) is None  # a Dapr instance is not on our port
        assert dapr.run("get_status", both.dapr_address, instance_id=ours[0]) == {"status": None}
    finally:
        official.stop()
        if dapr_worker is not None:
            stop(dapr_worker)


CLIENT_TOKEN = "client-" + secrets.token_hex(12)
WORKER_TOKEN = "worker-" + secrets.token_hex(12)


def test_tokens_apply_on_the_dapr_port(dapr, replicas, tmp_path, hub_name):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [
        {"name": "dapr-client", "sha256": hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest(), "role": "client",
         "hubs": [hub_name]},
        {"name": "dapr-worker", "sha256": hashlib.sha256(WORKER_TOKEN.encode()).hexdigest(), "role": "worker",
         "hubs": [hub_name]}]}))
    server = replicas.start("--dapr-port", "0", "--auth-tokens-file", str(tokens))  # its own hub exists
    codes = dapr.run("auth", server.dapr_address, client_token=CLIENT_TOKEN, worker_token=WORKER_TOKEN)
    assert codes == {"none": "UNAUTHENTICATED", "client": "OK", "worker": "PERMISSION_DENIED"}
    worker_proc = dapr.start("worker_same", server.dapr_address,
                             metadata=[["authorization", f"Bearer {WORKER_TOKEN}"]])
    try:
        done = dapr.run("run_same", server.dapr_address, count=1,
                        metadata=[["authorization", f"Bearer {CLIENT_TOKEN}"]])
        assert done["outputs"] == ["dapr"]
    finally:
        stop(worker_proc)
