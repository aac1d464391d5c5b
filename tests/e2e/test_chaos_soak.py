"""A chaos soak of the whole surface, CI size: 60 ``chaos_parent`` instances (activities, timers, an external
event raced against a timeout, a sub-orchestration, signals, a delayed signal and a call to shared counter
entities, and continue-as-new twice; see ``chaos_app.py``) on three replicas with three SDK worker
processes, while workers and replicas are SIGKILLed and restarted and Redis (AOF, ``appendfsync always``) is
stopped and started again on its port. Every instance must end once with the output its seed implies,
every history must hold each completion once, and every entity operation must be applied exactly once.

The larger run: ``python -m benchmarks --only chaos`` (``benchmarks/README.md``).
"""
from __future__ import annotations

import json
import shutil
import tempfile

import pytest
from durabletask.internal import orchestrator_service_pb2 as pb

import chaos_check
from chaos_soak import SoakConfig, run_soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_every_instance_ends_once_with_its_result_through_kills_and_a_redis_restart():
    cfg = SoakConfig(instances=60, worker_kills=4, replica_kills=2, redis_restarts=1, start_seconds=20.0,
                     chaos_seconds=36.0, settle_seconds=60.0, seed=7)
    workdir = tempfile.mkdtemp(prefix="dt-chaos-")  # kept when the test fails: the replicas' and workers' logs
    report = run_soak(cfg, workdir)
    figures = {k: report[k] for k in ("instances", "completed_correctly", "lost", "stuck", "failed", "wrong",
                                      "duplicates", "entity_ops_lost", "entity_ops_applied_twice", "seconds", "kills")}
    print("\nchaos soak: " + json.dumps(figures))
    assert not report["chaos_errors"] and report["kills"] == {"workers": 4, "replicas": 2, "redis_restarts": 1}, \
        report["timeline"]
    if chaos_check.ok(report):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        details = {k: report[k] for k in ("problems", "entity_problems", "diagnoses", "raises_failed",
                                          "start_failed", "timeline")}
        pytest.fail(f"chaos soak failed: {json.dumps(figures)}\n{json.dumps(details, indent=1, default=str)}"
                    f"\n(Redis', replica and worker logs kept in {workdir})")


def test_the_history_check_sees_a_second_completion_a_second_timer_and_a_second_event():
    """The soak can fail: its history check finds what a double application leaves."""
    def event(n: int, **kind) -> pb.HistoryEvent:
        return pb.HistoryEvent(eventId=n, **kind)

    clean = [event(-1, executionStarted=pb.ExecutionStartedEvent(name="p")),
             event(1, taskScheduled=pb.TaskScheduledEvent(name="a")), event(2, timerCreated=pb.TimerCreatedEvent()),
             event(-1, taskCompleted=pb.TaskCompletedEvent(taskScheduledId=1)),
             event(-1, timerFired=pb.TimerFiredEvent(timerId=2)), event(-1, eventRaised=pb.EventRaisedEvent(name="go-2")),
             event(-1, executionCompleted=pb.ExecutionCompletedEvent())]
    assert chaos_check.duplicates(clean, set()) == []
    doubled = clean + [clean[3], clean[4], clean[5], event(-1, taskCompleted=pb.TaskCompletedEvent(taskScheduledId=9))]
    found = chaos_check.duplicates(doubled, set())
    assert found == ["taskCompleted 1 x2", "timerFired 2 x2", "eventRaised 'go-2' x2", "taskCompleted 9 without its cause"]
    assert chaos_check.duplicates(doubled, {"go-2"}) == [f for f in found if "go-2" not in f]
