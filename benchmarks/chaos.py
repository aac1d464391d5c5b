"""The chaos soak at a larger size than CI's (``tests/e2e/test_chaos_soak.py``): ``chaos_parent``
instances (activities, timers, an external event raced against a timeout, a sub-orchestration, signals, a
delayed signal and a call to shared counter entities, continue-as-new twice) on three replicas with three
SDK worker processes, while workers and replicas are SIGKILLed and started again and Redis (AOF,
``appendfsync always``) is stopped and started again on its port, alternately by SIGTERM and SIGKILL.

The soak runs as its own process (``tests/e2e/chaos_soak.py``: it uses the SDK's generated protobuf
module, which cannot share a process with ours) and prints its report; the table gives instances,
completed correctly, lost, stuck, failed or wrong, duplicates, entity operations lost and applied twice,
the chaos done and the time. Target: every instance completed correctly, nothing lost, stuck or applied
twice. The run's directory (Redis', replicas' and workers' logs) is kept and named in the details.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .common import PartResult, Row, log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOAK = os.path.join(REPO, "tests", "e2e", "chaos_soak.py")
FULL = dict(instances=300, worker_kills=10, replica_kills=6, redis_restarts=3, start_seconds=90.0,
            chaos_seconds=150.0, settle_seconds=120.0)
QUICK = dict(instances=60, worker_kills=3, replica_kills=2, redis_restarts=1, start_seconds=15.0,
             chaos_seconds=30.0, settle_seconds=60.0)


def run(quick: bool = False, seed: int = 11) -> PartResult:
    size = {**(QUICK if quick else FULL), "seed": seed}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in size.items()]
    log(f"chaos: {size}")
    proc = subprocess.run([sys.executable, SOAK, *args], cwd=os.path.dirname(SOAK), capture_output=True, text=True,
                          timeout=1800)
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"the chaos soak did not report (code {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    for line in lines[:-1]:
        log(f"chaos: {line}")
    kills = report["kills"]
    clean = report["completed_correctly"] == report["instances"] and not report["entity_problems"]
    rows = [
        Row("chaos", "instances (3 executions each)", report["instances"]),
        Row("chaos", "completed correctly", report["completed_correctly"], target=f"{report['instances']}",
            ok=report["completed_correctly"] == report["instances"]),
        Row("chaos", "lost", report["lost"], target="0", ok=report["lost"] == 0),
        Row("chaos", "stuck", report["stuck"], target="0", ok=report["stuck"] == 0),
        Row("chaos", "failed or wrong result", report["failed"] + report["wrong"], target="0",
            ok=report["failed"] + report["wrong"] == 0),
        Row("chaos", "duplicates (histories, entity ops)", report["duplicates"], target="0",
            ok=report["duplicates"] == 0),
        Row("chaos", "entity operations lost", report["entity_ops_lost"], target="0", ok=report["entity_ops_lost"] == 0),
        Row("chaos", "workers killed (SIGKILL)", kills["workers"]),
        Row("chaos", "replicas killed (SIGKILL)", kills["replicas"]),
        Row("chaos", "Redis restarts", kills["redis_restarts"]),
        Row("chaos", "time", report["seconds"], unit="s"),
    ]
    notes = [] if clean else [f"logs kept in {report['workdir']}"]
    return PartResult("chaos", rows, details=report, notes=notes)
