"""The image of deploy/Dockerfile, built offline (wheels from this machine) with a private Docker
engine (../shared/tools/local-docker.sh beside the repository), run with --network host against a
redis-server this test starts: as built (its own non-root user), and hardened as the pod runs it
(--read-only, --user, no capabilities, no new privileges). An SDK client and worker get through.

Skipped, saying why, when the engine's script is missing or no engine can start. The engine is
stopped at the end only if this test started it; the built image is kept (layers are reused).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy_helpers import (DEPLOY, DRIVER, container, find, free_port, health_check, render, secret_data,
                            start_redis, stop_process, wait_for)

ENGINE_SCRIPT = Path(__file__).resolve().parents[3] / "shared/tools/local-docker.sh"
BASE = "local/debian-python:bookworm"
STABLE_TAG = "dt-scheduler:deploy-test"
ENGINE_TIMEOUT = 600  # first time: installs docker.io and debootstraps the base (about a minute)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    """The private engine's environment. Test runs may overlap (several checkouts on one machine):
    each holds a shared lock while it uses the engine, and the engine is stopped by the last user out,
    only if a test started it (its dockerd pid is in the marker file)."""
    if not ENGINE_SCRIPT.exists():
        pytest.skip(f"no Docker engine script at {ENGINE_SCRIPT} (../shared/tools/local-docker.sh beside the "
                    f"repository): the image cannot be built here")
    if shutil.which("docker") is None and shutil.which("apt-get") is None:
        pytest.skip("no docker command and no apt-get to install docker.io with: no Docker engine can start")
    state = Path(os.environ.get("DT_DOCKER_DIR", "/tmp/dt-docker"))
    env = {**os.environ, "DOCKER_HOST": f"unix://{state}/docker.sock"}
    marker = Path(f"{state}.started-by-tests")
    lock = open(f"{state}.tests.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if not _engine_up(env):
            try:
                result = subprocess.run(["bash", str(ENGINE_SCRIPT)], capture_output=True, text=True,
                                        timeout=ENGINE_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.skip(f"{ENGINE_SCRIPT} did not bring up a Docker engine within {ENGINE_TIMEOUT}s")
            if result.returncode != 0:
                pytest.skip(f"no Docker engine could start: {ENGINE_SCRIPT} exited {result.returncode}: "
                            f"{result.stderr.strip()[-500:]}")
            for line in result.stdout.splitlines():  # export DOCKER_HOST=unix://...
                if line.startswith("export DOCKER_HOST="):
                    env["DOCKER_HOST"] = line.split("=", 1)[1].strip()
            if not _engine_up(env):
                pytest.skip(f"{ENGINE_SCRIPT} ran but `docker info` fails (DOCKER_HOST={env['DOCKER_HOST']})")
            marker.write_text(_dockerd_pid(state))
        fcntl.flock(lock, fcntl.LOCK_SH)
    except BaseException:
        lock.close()
        raise
    try:
        yield env
    finally:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else is using it
            if marker.exists() and marker.read_text() == _dockerd_pid(state) != "":
                _stop_engine(state, env)
                marker.unlink()
        except BlockingIOError:
            print("\nthe Docker engine is in use by another test run: that run stops it")
        finally:
            lock.close()


def _engine_up(env: dict[str, str]) -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], env=env, capture_output=True, timeout=30).returncode == 0


def _stop_engine(state: Path, env: dict[str, str], timeout: float = 60.0) -> None:
    """Stop the engine and wait until it is gone (still holding the lock: the next run finds no engine
    shutting down)."""
    pid = _dockerd_pid(state)
    subprocess.run(["bash", str(ENGINE_SCRIPT), "--stop"], capture_output=True, timeout=60)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (_alive(pid) or _engine_up(env)):
        time.sleep(0.2)


def _alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped
    except (OSError, IndexError):
        return False


def _dockerd_pid(state: Path) -> str:
    try:
        return (state / "dockerd.pid").read_text().strip()
    except OSError:
        return ""


def docker(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def image(docker_env) -> Iterator[str]:
    """The image, tagged for this run (another run may build at the same time); STABLE_TAG keeps the
    last build, so that the next build reuses its layers."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"the wheels are built with this Python ({sys.version.split()[0]}); the base image "
                    f"{BASE} has Python 3.11, which could not install them")
    tag = f"{STABLE_TAG}-{os.getpid()}"
    started = time.monotonic()
    result = subprocess.run([str(DEPLOY / "build-image.sh"), tag], capture_output=True, text=True, timeout=600,
                            env={**docker_env, "BASE": BASE, "PYTHON": sys.executable})
    assert result.returncode == 0, f"deploy/build-image.sh failed:\n{result.stderr[-5000:]}"
    print(f"\nimage {tag} built in {time.monotonic() - started:.0f}s")
    docker(docker_env, "tag", tag, STABLE_TAG)
    yield tag
    docker(docker_env, "rmi", tag, check=False)


def test_image_metadata(docker_env, image):
    config = json.loads(docker(docker_env, "image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["dt-scheduler"] and config["Cmd"] == ["serve"]
    assert set(config["ExposedPorts"]) == {"4001/tcp", "9090/tcp"}
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["DT_HOST"] == "0.0.0.0" and env["DT_METRICS_PORT"] == "9090"
    # Provenance: the OCI labels of build-image.sh, and the revision the service reports (dt_build_info).
    labels = config["Labels"]
    revision = subprocess.run(["git", "-C", str(DEPLOY.parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    assert labels["org.opencontainers.image.revision"].startswith(revision)
    assert env["DT_BUILD_REVISION"] == labels["org.opencontainers.image.revision"]
    assert labels["org.opencontainers.image.version"] == docker(
        docker_env, "run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c",
        "from importlib.metadata import version; print(version('dt-redis-scheduler'))").stdout.strip()
    assert labels["org.opencontainers.image.created"].endswith("Z")
    # What runs is the service's console script from the image's virtualenv, as that user.
    ident = docker(docker_env, "run", "--rm", "--network", "host", "--entrypoint", "id", image).stdout
    assert ident.startswith("uid=10001(dt) gid=10001(dt)"), ident
    # As built, it listens on 0.0.0.0 and so refuses to start without a tokens file.
    refused = docker(docker_env, "run", "--rm", "--network", "host", image, check=False)
    assert refused.returncode == 2 and "DT_AUTH_TOKENS_FILE" in refused.stderr, refused.stderr


@pytest.mark.parametrize("hardened", [False, True], ids=["as-built", "read-only-non-root"])
def test_image_serves_an_sdk_client(docker_env, image, tmp_path, hardened):
    objects = render("overlays/dev")  # its dev tokens and Redis password
    deployment = find(objects, "Deployment", "dt-scheduler")
    ctr = container(deployment)
    password = secret_data(objects, "dt-scheduler-redis")["password"].decode()
    tokens = {k: v.decode() for k, v in secret_data(objects, "dt-scheduler-client-tokens").items()}
    (tmp_path / "redis").mkdir()
    redis_proc, redis_port = start_redis(["--requirepass", password, "--save", ""], tmp_path / "redis")
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()
    (tokens_dir / "tokens.json").write_bytes(secret_data(objects, "dt-scheduler-tokens")["tokens.json"])
    os.chmod(tmp_path, 0o755)
    os.chmod(tokens_dir, 0o755)
    os.chmod(tokens_dir / "tokens.json", 0o644)  # a Secret volume: readable by the pod's group
    mount = next(m["mountPath"] for m in ctr["volumeMounts"] if m["name"] == "tokens")
    port, metrics_port = free_port(), free_port()
    name = f"dt-deploy-test-{os.getpid()}-{int(hardened)}"
    args = ["run", "-d", "--name", name, "--network", "host",
            "-e", "DT_HOST=127.0.0.1", "-e", f"DT_PORT={port}", "-e", f"DT_METRICS_PORT={metrics_port}",
            "-e", f"DT_REDIS_URL=redis://:{password}@127.0.0.1:{redis_port}/0",
            "-e", f"DT_AUTH_TOKENS_FILE={mount}/tokens.json", "-e", "DT_LOG_FORMAT=json",
            "-v", f"{tokens_dir}:{mount}:ro"]
    if hardened:  # what the pod's securityContext asks (and no /tmp at all: nothing is written)
        args += ["--read-only", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    docker(docker_env, "rm", "-f", name, check=False)
    docker(docker_env, *args, image)
    try:
        wait_for(lambda: "READY 127.0.0.1:" in docker(docker_env, "logs", name).stdout, 60,
                 f"the container to print READY; logs:\n{docker(docker_env, 'logs', name, check=False).stderr[-2000:]}",
                 interval=0.3)
        assert health_check(port, "liveness") == "SERVING"
        wait_for(lambda: health_check(port, "readiness") == "SERVING", 20, "readiness SERVING")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
            text = page.read().decode()
        assert "# TYPE dt_" in text
        revision = json.loads(docker(docker_env, "image", "inspect", image).stdout)[0]["Config"]["Labels"][
            "org.opencontainers.image.revision"]
        assert f'revision="{revision}"' in next(line for line in text.splitlines() if line.startswith("dt_build_info{"))
        # The exec probe of deploy/components/tls, inside the container (plaintext here).
        assert docker(docker_env, "exec", name, "python", "/opt/dt-scheduler/probe.py", "readiness",
                      check=False).returncode == 0
        uid = docker(docker_env, "exec", name, "python", "-c", "import os; print(os.getuid(), os.getgid())").stdout
        assert uid.split() == ["10001", "10001"]

        result = subprocess.run([sys.executable, str(DRIVER), "roundtrip", f"127.0.0.1:{port}", tokens["client"],
                                 tokens["worker"]], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        assert seen == {"hello": "OK", "anonymous_hello": "UNAUTHENTICATED", "pending": "PENDING",
                        "status": "COMPLETED", "output": "hello image"}, seen

        if hardened:  # the Deployment's preStop hook runs in this image
            pre_stop = ctr["lifecycle"]["preStop"]["exec"]["command"]
            assert docker(docker_env, "exec", name, *pre_stop, check=False).returncode == 0
        # Nothing written to the image's filesystem at run time, even where it could (as built).
        # (Docker itself creates the mount point and its parents.)
        written = [line for line in docker(docker_env, "diff", name).stdout.splitlines()
                   if not (mount + "/").startswith(line.split(" ", 1)[1] + "/")]
        assert written == [], f"the container changed files: {written}"
        # docker stop: SIGTERM, then the drain; the process must exit 0 well within the grace.
        started = time.monotonic()
        docker(docker_env, "stop", "-t", "40", name, timeout=60)
        state = json.loads(docker(docker_env, "inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, (state, docker(docker_env, "logs", name).stderr[-3000:])
        assert time.monotonic() - started < 30
    finally:
        docker(docker_env, "rm", "-f", name, check=False)
        stop_process(redis_proc)
