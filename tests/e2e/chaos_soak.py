"""The chaos soak: ``chaos_parent`` instances (``chaos_app.py``) on three replicas with SDK worker
processes, while a monkey (``chaos.py``) kills workers and replicas and restarts Redis; then every
instance, sub-orchestration, history and entity is checked (``chaos_check.py``).

``python chaos_soak.py --instances 300 --worker-kills 8 --replica-kills 5 --redis-restarts 3`` runs one and
prints its report as the last line (JSON); ``test_chaos_soak.py`` and ``python -m benchmarks --only
chaos`` call :func:`run_soak`/this script.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import grpc
from durabletask import client

if __name__ == "__main__":  # run as a script: e2e_helpers imports the repository's benchmarks package
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import chaos_check
from chaos import Cluster, plan
from chaos_app import ROUNDS, parent_input


@dataclass
class SoakConfig:
    instances: int = 40
    replicas: int = 3
    workers: int = 3
    worker_kills: int = 3
    replica_kills: int = 2
    redis_restarts: int = 1
    start_seconds: float = 12.0  # instances are started evenly over this
    raise_gap: float = 2.0  # go-<r> is raised about r * raise_gap after the instance's start (jittered)
    chaos_seconds: float = 30.0  # the monkey's actions are spread over this
    settle_seconds: float = 60.0  # after the last action and the last raise: the deadline to finish
    seed: int = 1


class Caller:
    """SDK clients on every replica; a call goes to the next replica and is tried again on failure until
    its deadline (a client on a replica that failed is made anew, so no gRPC reconnect backoff holds it)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.clients = [client.TaskHubGrpcClient(host_address=a) for a in addresses]
        self.turn = 0
        logging.getLogger("durabletask-client").setLevel(logging.WARNING)  # no line per call

    def call(self, fn, deadline: float = 45.0):
        """``fn(c)`` -> (its result, the failures before it); the last error once the deadline passes."""
        failures: list[str] = []
        end = time.monotonic() + deadline
        while True:
            i = self.turn = (self.turn + 1) % len(self.clients)
            try:
                return fn(self.clients[i]), failures
            except grpc.RpcError as exc:
                failures.append(f"{self.addresses[i]}: {exc.code().name}")
                if exc.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.INVALID_ARGUMENT) or time.monotonic() > end:
                    raise
                self.clients[i].close()
                self.clients[i] = client.TaskHubGrpcClient(host_address=self.addresses[i])
                time.sleep(0.1)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def iid_of(run: str, n: int) -> str:
    return f"chaos-{run}-{n}"


def drive(caller: Caller, cfg: SoakConfig, run: str, t0: float, record: dict) -> None:
    """Start the instances and raise their events on a schedule; ``record`` gets what was acknowledged and
    which raises were tried more than once (their outcome unknown: a duplicate event is then allowed)."""
    import random
    rng = random.Random(cfg.seed)
    schedule = []  # (time, kind, n, round)
    for n in range(cfg.instances):
        start = cfg.start_seconds * n / max(cfg.instances, 1)
        schedule.append((start, 0, n, -1))
        for r in range(ROUNDS):
            schedule.append((start + r * cfg.raise_gap + rng.uniform(0, cfg.raise_gap), 1, n, r))
    schedule.sort()
    for at, kind, n, r in schedule:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        iid = iid_of(run, n)
        if kind == 0:
            try:
                caller.call(lambda c: c.schedule_new_orchestration("chaos_parent", input=parent_input(n),
                                                                   instance_id=iid))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # an earlier try was applied: that is fine
                    record["start_failed"][iid] = exc.code().name
                    continue
            record["started"].append(iid)
        elif iid in record["started"]:
            try:
                _, failures = caller.call(lambda c: c.raise_orchestration_event(iid, f"go-{r}", data=f"ev-{n}-{r}"))
                if failures:
                    record["ambiguous_raises"].append([iid, r, failures])
            except grpc.RpcError as exc:
                record["raise_failed"].append([iid, r, exc.code().name])


def run_soak(cfg: SoakConfig, workdir: str | None = None, log=print) -> dict:
    """Run one soak; returns its report (``chaos_check.check``'s, with the chaos done and the durations)."""
    workdir = workdir or tempfile.mkdtemp(prefix="dt-chaos-")
    run = uuid.uuid4().hex[:6]
    prefix, hub = "chaos" + run, "hub-" + run
    log(f"chaos soak {run}: {asdict(cfg)}; logs in {workdir}")
    cluster = Cluster(workdir, cfg.replicas, cfg.workers, prefix, hub, cfg.seed)
    caller = Caller(cluster.addresses)
    record = {"started": [], "start_failed": {}, "ambiguous_raises": [], "raise_failed": []}
    stop = threading.Event()
    try:
        t0 = time.monotonic()
        actions = plan(cfg.worker_kills, cfg.replica_kills, cfg.redis_restarts, cfg.seed)
        monkey = threading.Thread(target=cluster.run_plan, args=(actions, cfg.chaos_seconds, stop), daemon=True)
        monkey.start()
        drive(caller, cfg, run, t0, record)
        monkey.join()
        log(f"chaos done after {time.monotonic() - t0:.0f}s: {cluster.chaos.timeline}")
        report = chaos_check.check(caller, cluster, prefix, hub,
                                   [iid_of(run, n) for n in range(cfg.instances)], record, cfg.settle_seconds, log)
        report.update(seconds=round(time.monotonic() - t0, 1), workdir=workdir,
                      kills={"workers": cluster.chaos.worker_kills, "replicas": cluster.chaos.replica_kills,
                             "redis_restarts": cluster.chaos.redis_restarts},
                      chaos_errors=cluster.chaos.errors,
                      timeline=cluster.chaos.timeline, config=asdict(cfg))
        return report
    finally:
        stop.set()
        caller.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    defaults = SoakConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args()
    report = run_soak(SoakConfig(**vars(args)), log=lambda m: print(m, flush=True))
    if chaos_check.ok(report):  # the logs are kept only when something went wrong
        shutil.rmtree(report["workdir"], ignore_errors=True)
    print(json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
