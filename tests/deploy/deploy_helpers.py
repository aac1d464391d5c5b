"""Helpers of the deploy/ tests: render the kustomizations, read the rendered objects as the kubelet
would (environment with ``$(VAR)`` expansion, mounted Secrets as files), a round-robin TCP proxy
standing in for a Service, and gRPC health probes.

Nothing here imports ``scheduler._proto`` or the durabletask SDK: these tests run in the same pytest
process as the server tests (which import the service's protobuf module), so everything that needs
the SDK runs in a subprocess (``sdk_driver.py``).
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/redis-cluster", "overlays/sentinel"]
DRIVER = Path(__file__).resolve().parent / "sdk_driver.py"
# The Kubernetes version whose schemas the manifests must satisfy (strictly: no unknown fields).
K8S_VERSION = "1.33.0"


# -- rendering ------------------------------------------------------------------------------------

def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests "
                    "(install kubectl, e.g. Debian's kubernetes-client or the upstream binary)")
    return path


def render(kustomization: str) -> list[dict]:
    """The objects `kubectl kustomize deploy/<kustomization>` renders."""
    result = subprocess.run([kubectl(), "kustomize", str(DEPLOY / kustomization)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize deploy/{kustomization} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    """The one object of ``kind`` (with ``name``, or its generated name ``name-<hash>``)."""
    found = [o for o in objects if o["kind"] == kind and
             (name is None or o["metadata"]["name"] == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}",
                                                                             o["metadata"]["name"]))]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(workload: dict, name: str | None = None) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


# -- what the kubelet does with a container spec ---------------------------------------------------

def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` expansion as the kubelet does it for env values, command and args: a defined
    variable is replaced, an undefined reference stays as written, ``$$`` is a literal ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end == -1:
                    out.append(text[i:])
                    break
                name = text[i + 2:end]
                out.append(env[name] if name in env else text[i:end + 1])
                i = end + 1
                continue
            out.append(c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def secret_data(objects: list[dict], name: str) -> dict[str, bytes]:
    secret = find(objects, "Secret", name)
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def configmap_data(objects: list[dict], name: str) -> dict[str, str]:
    return dict(find(objects, "ConfigMap", name).get("data") or {})


def container_env(objects: list[dict], ctr: dict, pod_name: str, namespace: str = "default") -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first (not expanded), then env
    in order (values expanded with what is defined so far; valueFrom resolved)."""
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            values = configmap_data(objects, source["configMapRef"]["name"])
        else:
            values = {k: v.decode() for k, v in secret_data(objects, source["secretRef"]["name"]).items()}
        env.update({prefix + k: v for k, v in values.items()})
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = kubelet_expand(var["value"], env)
        elif "valueFrom" in var:
            ref = var["valueFrom"]
            if "secretKeyRef" in ref:
                env[var["name"]] = secret_data(objects, ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]].decode()
            elif "configMapKeyRef" in ref:
                env[var["name"]] = configmap_data(objects, ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
            elif "fieldRef" in ref:
                env[var["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace,
                                    "status.podIP": "127.0.0.1", "spec.nodeName": "local"}[ref["fieldRef"]["fieldPath"]]
            else:
                raise AssertionError(f"valueFrom {ref} is not understood by this test")
        else:
            env[var["name"]] = ""
    return env


def materialize_mounts(objects: list[dict], workload: dict, ctr: dict, root: Path) -> dict[str, Path]:
    """Write the Secret and ConfigMap volumes the container mounts under ``root`` (same file names and
    contents as the kubelet would project); returns mountPath -> local directory."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    mounts: dict[str, Path] = {}
    for mount in ctr.get("volumeMounts", []):
        assert mount["name"] in volumes or mount["name"] in claims, f"volume {mount['name']} is not defined"
        volume = volumes.get(mount["name"], {})  # a StatefulSet's claim: an empty directory here
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "secret" in volume or "configMap" in volume:
            source = volume.get("secret") or volume.get("configMap")
            try:
                if "secret" in volume:
                    data = secret_data(objects, source["secretName"])
                else:
                    data = {k: v.encode() for k, v in configmap_data(objects, source["name"]).items()}
            except AssertionError:
                if source.get("optional"):
                    data = {}  # an optional volume whose object is absent: an empty directory
                else:
                    raise
            items = source.get("items")
            for key, content in data.items():
                paths = [i["path"] for i in items if i["key"] == key] if items else [key]
                for rel in paths:
                    (local / rel).parent.mkdir(parents=True, exist_ok=True)
                    (local / rel).write_bytes(content)
        mounts[mount["mountPath"]] = local
    return mounts


def remap_paths(env: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """Env values that name a file under a mount path, pointed at the local copy."""
    out = dict(env)
    for name, value in env.items():
        for mount_path, local in mounts.items():
            if value.startswith(mount_path.rstrip("/") + "/"):
                out[name] = str(local) + value[len(mount_path.rstrip("/")):]
    return out


def local_command(argv: list[str]) -> list[str]:
    """A container command resolved on this machine: console scripts and python from this venv."""
    bindir = Path(sys.executable).parent
    head = argv[0]
    if head in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    candidate = bindir / head
    if candidate.exists():
        return [str(candidate), *argv[1:]]
    found = shutil.which(head)
    assert found, f"the container command {head!r} is not found on this machine"
    return [found, *argv[1:]]


def base_process_env() -> dict[str, str]:
    """The little of this machine's environment a local "pod" gets (no DT_* of the caller's shell)."""
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
    for name in ("LANG", "LC_ALL", "TMPDIR", "HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


# -- probes ---------------------------------------------------------------------------------------

def health_check(port: int, service: str, timeout: float = 2.0, host: str = "127.0.0.1") -> str:
    """What the kubelet's gRPC probe asks: grpc.health.v1.Health/Check(service) on host:port; the
    status name, or the gRPC error code name."""
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a Service stand-in ---------------------------------------------------------------------------

class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1 that hands each new connection to the next backend (like a ClusterIP
    Service: per connection, not per request); a backend that refuses is skipped. Removing a backend
    (its endpoint went away) leaves its open connections alone, as conntrack does; a connection ends
    on both sides when either side closes.

    It may listen on several ports, all balanced together over the same backends (one Service), so
    that a test can tell its clients apart: ``history`` records, per connection, the port it came in
    on, the backend it went to, and when it opened and closed (time.time())."""

    def __init__(self) -> None:
        self.backends: list[int] = []
        self.connections: dict[int, int] = {}  # backend port -> connections handed to it
        self.history: list[dict] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._next = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rr-proxy", daemon=True)
        self._thread.start()
        self.port = self.listen()

    def listen(self) -> int:
        """Another port into the same balancing; returns it."""
        async def start() -> int:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self._servers.append(server)
            return server.sockets[0].getsockname()[1]

        return asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def total_connections(self) -> int:
        with self._lock:
            return sum(self.connections.values())

    def backend_at(self, listener: int, when: float) -> int | None:
        """The backend of the connection that came in on ``listener`` and was open at ``when``."""
        with self._lock:
            for c in reversed(self.history):
                if c["listener"] == listener and c["opened"] <= when and (c["closed"] is None or when <= c["closed"]):
                    return c["backend"]
        return None

    def add(self, port: int) -> None:
        with self._lock:
            self.backends.append(port)

    def remove(self, port: int) -> None:
        with self._lock:
            self.backends.remove(port)

    def _pick(self) -> list[int]:
        with self._lock:
            if not self.backends:
                return []
            n = self._next % len(self.backends)
            self._next += 1
            return self.backends[n:] + self.backends[:n]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        listener = writer.get_extra_info("sockname")[1]
        for port in self._pick():
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            record = {"listener": listener, "backend": port, "opened": time.time(), "closed": None}
            with self._lock:
                self.connections[port] = self.connections.get(port, 0) + 1
                self.history.append(record)
            break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass

        tasks = [asyncio.ensure_future(pump(reader, up_writer)), asyncio.ensure_future(pump(up_reader, writer))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            record["closed"] = time.time()
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                try:
                    w.close()
                except OSError:
                    pass

    def close(self) -> None:
        async def stop():
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- a redis-server as the manifests run it ------------------------------------------------------------

def remap_text(text: str, mounts: dict[str, Path]) -> str:
    """``text`` (a script, a configuration file) with every mount path replaced by its local directory."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        text = text.replace(mount_path.rstrip("/"), str(mounts[mount_path]))
    return text


def redis_workload_command(objects: list[dict], workload: dict, root: Path) -> list[str]:
    """The Redis container of ``workload`` as a local command: its mounted ConfigMaps and Secrets written
    under ``root`` (with the mount paths in them pointed at the local copies), its command and args with
    the same paths remapped and ``$(VAR)`` expanded as the kubelet does. Arguments added after it reach
    redis-server (the container's script passes "$@" on)."""
    ctr = container(workload)
    mounts = materialize_mounts(objects, workload, ctr, root)
    for local in mounts.values():
        for path in local.rglob("*"):
            if path.is_file() and path.suffix == ".conf":
                path.write_text(remap_text(path.read_text(), mounts))
    env = container_env(objects, ctr, workload["metadata"]["name"] + "-0")
    return [remap_text(kubelet_expand(a, env), mounts) for a in ctr.get("command", []) + ctr.get("args", [])]


def start_redis(args: list[str], workdir: Path, timeout: float = 20.0, command: list[str] | None = None,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """redis-server with ``args`` (as a manifest gives them) — or ``command`` (a container's own start,
    :func:`redis_workload_command`) — on a free port of 127.0.0.1 with its files in ``workdir``: only
    --dir, --port and --bind differ from the manifest."""
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(executable):
        pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
    kept: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in ("--dir", "--port", "--bind"):
            i += 2
            continue
        kept.append(args[i])
        i += 1
    port = free_port()
    head = command if command is not None else [executable, *kept]
    proc = subprocess.Popen([*head, "--dir", str(workdir), "--port", str(port), "--bind", "127.0.0.1",
                             "--logfile", str(workdir / "redis.log")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return bool(s.recv(64))  # +PONG, or -NOAUTH when a password is required
        except OSError:
            return False

    wait_for(answers, timeout, f"redis-server on port {port}")
    return proc, port


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
