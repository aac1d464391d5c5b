"""The dev overlay's Deployment, run as the kubelet would run it — three local replicas with the
rendered command, args and environment (ConfigMap and Secret values, ``$(VAR)`` expanded, mounted
Secrets as files) against a redis-server started with the rendered StatefulSet's arguments — probed
as the kubelet probes it, then restarted replica by replica under load, as `kubectl rollout restart`
does, behind a round-robin proxy standing in for the Service.

Only what must differ on one machine is overridden: DT_REDIS_URL's host and port (the password
stays), DT_HOST, DT_PORT and DT_METRICS_PORT, and the paths of mounted Secrets.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
import redis

from scheduler.logs import ready_address

from deploy_helpers import (DRIVER, RoundRobinProxy, base_process_env, container, container_env, find, free_port,
                            health_check, kubelet_expand, local_command, materialize_mounts, redis_workload_command,
                            remap_paths, render, secret_data, start_redis, stop_process, wait_for)

ORCHESTRATIONS = 12
STEPS = 3
ACTIVITY_SECONDS = 10.0
SPREAD_SECONDS = 3.0  # the k-th orchestration is due k*SPREAD seconds after scheduling
WORKERS = 3
CLIENT_TIMEOUT = 150.0

pytestmark = pytest.mark.timeout(300)


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log: Path
    sigterm_at: float | None = None
    exited_at: float | None = None
    probes: dict[str, str] = field(default_factory=dict)


class Pod:
    """What the kubelet would start for the dev Deployment, on this machine."""

    def __init__(self, objects: list[dict], redis_port: int, workdir: Path) -> None:
        self.objects = objects
        self.deployment = find(objects, "Deployment", "dt-scheduler")
        self.ctr = container(self.deployment)
        self.redis_port = redis_port
        self.workdir = workdir
        self.count = 0

    def env(self, name: str) -> tuple[dict[str, str], int, int]:
        env = container_env(self.objects, self.ctr, pod_name=name, namespace="dt-dev")
        mounts = materialize_mounts(self.objects, self.deployment, self.ctr, self.workdir / name)
        env = remap_paths(env, mounts)
        url = urlparse(env["DT_REDIS_URL"])
        netloc = url.netloc.rsplit("@", 1)
        env["DT_REDIS_URL"] = urlunparse(url._replace(netloc=f"{netloc[0]}@127.0.0.1:{self.redis_port}"))
        port, metrics_port = free_port(), free_port()
        env.update(DT_HOST="127.0.0.1", DT_PORT=str(port), DT_METRICS_PORT=str(metrics_port))
        return {**base_process_env(), "HOSTNAME": name, **env}, port, metrics_port

    def start(self) -> Replica:
        self.count += 1
        name = f"dt-scheduler-7d4b9c-{self.count}"
        env, port, metrics_port = self.env(name)
        argv = [kubelet_expand(a, env) for a in self.ctr.get("command", []) + self.ctr.get("args", [])]
        log = self.workdir / f"{name}.log"
        proc = subprocess.Popen(local_command(argv), env=env, stdout=subprocess.PIPE, stderr=log.open("w"),
                                text=True)
        line = proc.stdout.readline()
        # DT_LOG_FORMAT=json: the READY line is a JSON object too
        assert ready_address(line), f"{name} did not start ({line!r}); log:\n{log.read_text()[-3000:]}"
        return Replica(name, proc, port, metrics_port, log)

    def probe(self, replica: Replica) -> dict[str, str]:
        """Each probe of the container, asked as the kubelet asks it (port mapped to the local one)."""
        results = {}
        grpc_port = int(container_env(self.objects, self.ctr, replica.name)["DT_PORT"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = self.ctr[kind]["grpc"]
            assert spec["port"] == grpc_port, f"{kind} asks port {spec['port']}, the service listens on {grpc_port}"
            results[kind] = health_check(replica.port, spec.get("service", ""),
                                         timeout=self.ctr[kind].get("timeoutSeconds", 1))
        return results

    def wait_ready(self, replica: Replica) -> None:
        """Until every probe of the container answers SERVING (the kubelet would then add the endpoint)."""
        def all_serving():
            probes = self.probe(replica)
            return probes if set(probes.values()) == {"SERVING"} else None

        replica.probes = wait_for(all_serving, 20, f"{replica.name}'s probes to answer SERVING")

    def pre_stop(self, replica: Replica) -> None:
        env, _, _ = self.env(replica.name)
        argv = [kubelet_expand(a, env) for a in self.ctr["lifecycle"]["preStop"]["exec"]["command"]]
        subprocess.run(local_command(argv), env=env, check=True, timeout=60)


def test_rolling_restart_of_the_dev_deployment(tmp_path):
    objects = render("overlays/dev")
    deployment = find(objects, "Deployment", "dt-scheduler")
    pod_spec = deployment["spec"]["template"]["spec"]
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    replicas_wanted = deployment["spec"]["replicas"]
    config = container_env(objects, container(deployment), "x")
    grace = float(config["DT_SHUTDOWN_GRACE_SECONDS"])
    kill_after = pod_spec["terminationGracePeriodSeconds"]
    assert ACTIVITY_SECONDS < grace, "the activities must fit in the grace period for this test to mean anything"

    # Redis as the dev overlay's StatefulSet runs it (its start script, redis.conf and the password from the
    # mounted Secret).
    redis_sts = find(objects, "StatefulSet", "dt-redis")
    (tmp_path / "redis").mkdir()
    redis_proc, redis_port = start_redis([], tmp_path / "redis",
                                         command=redis_workload_command(objects, redis_sts, tmp_path / "redis-pod"))
    password = secret_data(objects, "dt-scheduler-redis")["password"].decode()
    rds = redis.Redis(host="127.0.0.1", port=redis_port, db=1, password=password)
    key = "deploytest"
    tokens = {k: v.decode() for k, v in secret_data(objects, "dt-scheduler-client-tokens").items()}

    pod = Pod(objects, redis_port, tmp_path)
    proxy = RoundRobinProxy()
    replicas: list[Replica] = []
    drivers: list[subprocess.Popen] = []
    exits: list[tuple[str, int, float, float]] = []  # name, exit code, SIGTERM, exit
    figures: dict[str, object] = {}
    draining: dict[int, tuple[float, float]] = {}  # replica port -> (SIGTERM, exit)
    try:
        # Three replicas, each ready by its own probes, each serving metrics.
        for _ in range(replicas_wanted):
            replicas.append(pod.start())
        for replica in replicas:
            pod.wait_ready(replica)
            with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as page:
                assert b"# TYPE dt_" in page.read(), f"{replica.name}: no dt_* metrics"
            proxy.add(replica.port)

        # SDK workers and a client, all through the proxy: one connection per worker, round robin.
        worker_ports: dict[int, int] = {}  # worker pid -> its port into the proxy
        for n in range(WORKERS):
            port = proxy.listen()
            drivers.append(subprocess.Popen(
                [sys.executable, str(DRIVER), "worker", f"127.0.0.1:{port}", tokens["worker"],
                 f"redis://:{password}@127.0.0.1:{redis_port}/1", key],
                stdout=subprocess.PIPE, stderr=(tmp_path / f"worker-{n}.log").open("w"), text=True))
            worker_ports[drivers[-1].pid] = port
            wait_for(lambda n=n: proxy.total_connections >= n + 1, 30, f"worker {n} to connect")
        client = subprocess.Popen(
            [sys.executable, str(DRIVER), "client", proxy.address, tokens["client"], str(ORCHESTRATIONS), str(STEPS),
             str(ACTIVITY_SECONDS), str(SPREAD_SECONDS), str(CLIENT_TIMEOUT)],
            stdout=subprocess.PIPE, stderr=(tmp_path / "client.log").open("w"), text=True)
        drivers.append(client)
        line = client.stdout.readline()
        assert line.startswith("SCHEDULED"), f"client: {line!r}\n{(tmp_path / 'client.log').read_text()[-3000:]}"
        wait_for(lambda: rds.llen(f"{key}:started") >= 4, 60, "four activities to start", interval=0.2)

        # The rolling restart, in the order the Deployment's strategy gives: with maxUnavailable 0 a
        # new replica is ready (and an endpoint) before an old one is taken out; then the old one
        # leaves the endpoints, runs its preStop hook, gets SIGTERM and must exit 0 within the period.
        surge_first = strategy["maxUnavailable"] == 0
        for old in list(replicas):
            new = None
            if surge_first:
                new = pod.start()
                pod.wait_ready(new)
                proxy.add(new.port)
            proxy.remove(old.port)
            leaving = time.monotonic()
            pod.pre_stop(old)
            old.sigterm_at = time.time()
            old.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: pod.probe(old)["readinessProbe"] != "SERVING", 5, "readiness to leave SERVING",
                            interval=0.05)
            try:
                code = old.proc.wait(max(kill_after - (time.monotonic() - leaving), 1))
            except subprocess.TimeoutExpired:  # the kubelet would SIGKILL now
                old.proc.kill()
                code = old.proc.wait(10)
            old.exited_at = time.time()
            draining[old.port] = (old.sigterm_at, old.exited_at)
            exits.append((old.name, code, old.sigterm_at, old.exited_at))
            replicas.remove(old)
            if not surge_first:
                new = pod.start()
                pod.wait_ready(new)
                proxy.add(new.port)
            replicas.append(new)

        out, _ = client.communicate(timeout=CLIENT_TIMEOUT + 60)
        report = json.loads(out.strip().splitlines()[-1])
        instances = report["instances"]

        # The figures.
        started = [json.loads(x) for x in rds.lrange(f"{key}:started", 0, -1)]
        finished = [json.loads(x) for x in rds.lrange(f"{key}:finished", 0, -1)]
        effects = {k.decode(): int(v) for k, v in rds.hgetall(f"{key}:effects").items()}
        runs: dict[str, int] = {}
        for s in started:
            runs[s["item"]] = runs.get(s["item"], 0) + 1
        # Activities that finished while the replica their worker's connection went to was draining
        # (between its SIGTERM and its exit): their results were completed through it, in its grace.
        in_grace: dict[str, int] = {}  # item -> the draining replica's port
        for f in finished:
            backend = proxy.backend_at(worker_ports[f["pid"]], f["t"])
            window = draining.get(backend)
            if window and window[0] <= f["t"] <= window[1]:
                in_grace[f["item"]] = backend
        per_replica = [sum(1 for b in in_grace.values() if b == port) for port in draining]
        figures = {
            "orchestrations": len(instances),
            "completed": sum(1 for i in instances.values() if i["status"] == "COMPLETED"),
            "lost": sum(1 for i in instances.values() if i["status"] is None),
            "stuck": sum(1 for i in instances.values() if i["status"] not in (None, "COMPLETED", "FAILED", "TERMINATED")),
            "failed": sum(1 for i in instances.values() if i["status"] in ("FAILED", "TERMINATED")),
            "duplicate_completions": sum(i.get("duplicate_completions", 0) for i in instances.values())
            + sum(n - 1 for n in effects.values() if n > 1),
            "activity_executions": len(started),
            "activities_expected": ORCHESTRATIONS * STEPS,
            "re_runs": sum(n - 1 for n in runs.values()),
            "finished_in_a_grace_period": len(in_grace),
            "finished_in_a_grace_period_per_restart": per_replica,
            "re_runs_of_those": sum(runs[i] - 1 for i in in_grace),
            "replica_exits": [(name, code, round(t1 - t0, 1)) for name, code, t0, t1 in exits],
            "connections_per_backend": dict(proxy.connections),
        }
        print("\nrolling restart figures: " + json.dumps(figures), flush=True)
        (tmp_path / "figures.json").write_text(json.dumps(figures, indent=1))

        assert [code for _, code, _, _ in exits] == [0] * replicas_wanted, f"replica exits: {figures['replica_exits']}"
        assert figures["lost"] == 0 and figures["stuck"] == 0 and figures["failed"] == 0, figures
        for iid, entry in instances.items():
            assert entry["output"] == [f"{iid}:{step}" for step in range(STEPS)], (iid, entry)
            assert entry["scheduled"] == entry["completed"] == STEPS and entry["unmatched"] == 0, (iid, entry)
        assert figures["duplicate_completions"] == 0, figures
        assert sorted(effects) == sorted(f"{iid}:{s}" for iid in instances for s in range(STEPS)), effects
        assert in_grace, \
            f"no activity finished while a replica drained: the test did not exercise the grace period {figures}"
        assert figures["re_runs_of_those"] == 0, figures
        assert figures["re_runs"] == 0, figures
        for name, _, t0, t1 in exits:
            assert t1 - t0 < kill_after, f"{name} took {t1 - t0:.1f}s to exit after SIGTERM"
    finally:
        for proc in drivers:
            stop_process(proc)
        leftover = []
        for replica in replicas:
            code = stop_process(replica.proc, timeout=kill_after)
            if code != 0:
                leftover.append((replica.name, code))
        proxy.close()
        stop_process(redis_proc)
        if figures:
            for replica_log in sorted(tmp_path.glob("dt-scheduler-*.log")):
                for line in replica_log.read_text().splitlines():
                    if "not completed within" in line or "Traceback" in line:
                        print(f"{replica_log.name}: {line}")
    assert not leftover, f"replicas that did not exit 0 on SIGTERM at the end: {leftover}"


