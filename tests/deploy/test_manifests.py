"""deploy/: every kustomization renders with `kubectl kustomize` and validates strictly against the
Kubernetes schemas (kubernetes-validate, offline), and what the objects say fits together: ports,
probes, grace periods, selectors, Secrets and the service's own settings."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from urllib.parse import parse_qsl, urlparse

import jsonschema
import kubernetes_validate
import pytest
import redis as redis_lib
import yaml

import crd_schemas
from deploy_helpers import (DEPLOY, KUSTOMIZATIONS, container, container_env, find, kubelet_expand,
                            redis_workload_command, render, secret_data, start_redis, stop_process)

VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]  # the oldest supported and the newest known
# base, redis-cluster, sentinel: created in the namespace beforehand (deploy/base/secrets.example.yaml)
SECRETS_MADE_OUTSIDE = {"dt-scheduler-redis", "dt-scheduler-tokens", "dt-scheduler-tls", "dt-scheduler-redis-ca"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {k: render(k) for k in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def known_env() -> set[str]:
    """The DT_* variables `dt-scheduler serve` reads (its --help names each one)."""
    out = subprocess.run([sys.executable, "-m", "scheduler", "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    names = set(re.findall(r"\bDT_[A-Z_]+", out))
    assert {"DT_PORT", "DT_REDIS_URL", "DT_SHUTDOWN_GRACE_SECONDS"} <= names
    return names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(rendered, kustomization, version):
    objects = rendered[kustomization]
    assert objects
    problems = []
    for obj in objects:
        custom = crd_schemas.SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        try:
            if custom is not None:  # a Prometheus Operator kind: kubernetes-validate has no schema for it
                jsonschema.validate(obj, custom)
            else:
                kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at "
                            f"{'/'.join(map(str, exc.path))}")
    assert not problems, "\n".join(problems)


def test_secret_examples_validate():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "base/secrets.example.yaml").read_text()) if d]
    assert {d["metadata"]["name"] for d in docs} <= SECRETS_MADE_OUTSIDE
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_fit_together(rendered, kustomization, known_env, tmp_path):
    objects = rendered[kustomization]
    deployment = find(objects, "Deployment", "dt-scheduler")
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    config = find(objects, "ConfigMap", "dt-scheduler-config")["data"]

    # Settings: only variables the service reads (a typo would be silently ignored), and a usable URL.
    for name in config:
        assert name in known_env or not name.startswith("DT_"), f"{name} is not a setting of dt-scheduler serve"
    for var in ctr["env"]:
        assert not var["name"].startswith("DT_") or var["name"] in known_env | {"DT_PROBE_SERVER_NAME"}, var["name"]
    assert [e["configMapRef"]["name"] for e in ctr["envFrom"]] == [find(objects, "ConfigMap", "dt-scheduler-config")
                                                                    ["metadata"]["name"]]
    grpc_port, metrics_port = int(config["DT_PORT"]), int(config["DT_METRICS_PORT"])
    grace = float(config["DT_SHUTDOWN_GRACE_SECONDS"])
    assert config["DT_HOST"] == "0.0.0.0"
    env_names = [v["name"] for v in ctr["env"]]
    assert "DT_AUTH_TOKENS_FILE" in env_names and "DT_ALLOW_UNAUTHENTICATED" not in config
    url_template = next(v["value"] for v in ctr["env"] if v["name"] == "DT_REDIS_URL")
    defined = {**config, "REDIS_PASSWORD": "p4ssw0rd"}
    url = kubelet_expand(url_template, defined)
    assert "$(" not in url, f"DT_REDIS_URL has an undefined reference: {url}"
    from scheduler.config import check_redis_url
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    for name, path in parse_qsl(urlparse(url).query):  # files named in the URL: in a mounted volume
        if name.startswith("ssl_") and name.endswith(("_certs", "file")):
            assert any(path.startswith(mount + "/") for mount in mounts), f"{name}={path} is not mounted"
            local = tmp_path / pathlib.Path(path).name
            local.write_text("-----BEGIN CERTIFICATE-----\n")
            url = url.replace(path, str(local))
    check_redis_url(url)
    assert env_names.index("REDIS_PASSWORD") < env_names.index("DT_REDIS_URL"), "expansion needs it defined first"

    # Ports: containerPorts, Service targets, probes and the NetworkPolicy agree with the settings.
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    service = find(objects, "Service", "dt-scheduler")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == \
        {"grpc": (4001, "grpc"), "metrics": (9090, "metrics")}
    tls = any(v["name"] == "DT_TLS_CERT_FILE" for v in ctr["env"])
    for kind, service_name in (("startupProbe", "liveness"), ("readinessProbe", "readiness"),
                               ("livenessProbe", "liveness")):
        probe = ctr[kind]
        if tls:  # the kubelet's gRPC probe speaks plaintext: exec probes over TLS instead
            assert probe["exec"]["command"] == ["python", "/opt/dt-scheduler/probe.py", service_name], kind
        else:
            assert probe["grpc"] == {"port": grpc_port, "service": service_name}, kind
    policy = find(objects, "NetworkPolicy", "dt-scheduler")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {grpc_port, metrics_port}
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    peers = {p["port"]: [peer for rule in policy["spec"]["ingress"] if p in rule["ports"] for peer in rule["from"]]
             for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    # Clients and workers by pod label here and by namespace label elsewhere; Prometheus by namespace label,
    # whatever its namespace is called (documented in deploy/README.md).
    assert {"namespaceSelector": {"matchLabels": {"dt-scheduler/client": "true"}}} in peers[grpc_port]
    assert peers[metrics_port] == [{"namespaceSelector": {"matchLabels": {"dt-scheduler/metrics": "true"}}}]

    # Shutdown: the kubelet's period covers the preStop sleep, the service's grace and a margin.
    pre_stop = ctr["lifecycle"]["preStop"]["exec"]["command"]
    sleep = float(re.search(r"sleep\(?\s*([\d.]+)", " ".join(pre_stop)).group(1))
    assert pod["terminationGracePeriodSeconds"] >= sleep + grace + 5
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # Security.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 1000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    for name in ("tokens", "tls"):
        assert mounts[name]["readOnly"] is True
    tokens_file = next(v["value"] for v in ctr["env"] if v["name"] == "DT_AUTH_TOKENS_FILE")
    assert tokens_file.startswith(mounts["tokens"]["mountPath"] + "/")
    assert volumes["tls"]["secret"]["optional"] is (not tls)
    if tls:
        for var in ("DT_TLS_CERT_FILE", "DT_TLS_KEY_FILE"):
            assert next(v["value"] for v in ctr["env"] if v["name"] == var).startswith(mounts["tls"]["mountPath"])

    # Availability: 3 replicas spread over nodes and zones, a budget of one, CPU autoscaling.
    assert deployment["spec"]["replicas"] == 3
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == \
        {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pdb = find(objects, "PodDisruptionBudget", "dt-scheduler")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # unready pods do not block a drain
    hpa = find(objects, "HorizontalPodAutoscaler", "dt-scheduler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    # Secrets: generated by the overlay (dev) or the ones documented to be created beforehand.
    referenced = {ref["secretKeyRef"]["name"] for v in ctr["env"] if (ref := v.get("valueFrom"))} | \
                 {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    generated = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    missing = referenced - generated
    if kustomization == "overlays/dev":
        assert missing == {"dt-scheduler-tls"}  # optional: dev serves plaintext
    else:
        assert missing <= SECRETS_MADE_OUTSIDE
    if kustomization != "overlays/dev":
        assert not generated, f"{kustomization} must not carry Secret values"
    else:  # dev: generated, with values that say what they are
        for name in ("dt-scheduler-redis", "dt-scheduler-client-tokens"):
            assert all(v.startswith(b"dev-only-") for v in secret_data(objects, name).values())

def redis_conf(objects: list[dict], workload: dict) -> tuple[dict[str, str], dict]:
    """The directives of the redis.conf a Redis workload mounts (the last of each wins, as in Redis), and its
    container."""
    ctr = container(workload)
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in ctr["volumeMounts"]:
        source = volumes.get(mount["name"], {}).get("configMap")
        if source:
            text = find(objects, "ConfigMap", source["name"])["data"]["redis.conf"]
            directives = {}
            for line in text.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    name, _, value = line.strip().partition(" ")
                    directives[name.lower()] = value.strip()
            return directives, ctr
    raise AssertionError(f"{workload['metadata']['name']} mounts no redis.conf")


def memory_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes quantity (Mi, Gi) or of a Redis memory size (mb is 2**20 bytes, m 10**6)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 1000, "m": 10**6,
             "g": 10**9}
    for unit in sorted(units, key=len, reverse=True):
        if quantity.endswith(unit):
            return int(quantity[:-len(unit)]) * units[unit]
    return int(quantity)


def assert_password_only_from_files(objects: list[dict], workload: dict) -> None:
    """The Redis password reaches the container as a mounted file, never in argv or in the environment."""
    ctr = container(workload)
    argv = " ".join(ctr.get("command", []) + ctr.get("args", []))
    assert "--requirepass" not in argv and "$(REDIS_PASSWORD)" not in argv, argv
    assert not [v for v in ctr.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})], ctr["env"]
    assert not [e for e in ctr.get("envFrom", []) if "secretRef" in e]
    pod = workload["spec"]["template"]["spec"]
    assert any(v.get("secret", {}).get("secretName", "").startswith("dt-scheduler-redis") for v in pod["volumes"])


def assert_headless_service_governs(objects: list[dict], workload: dict) -> None:
    service = find(objects, "Service", workload["spec"]["serviceName"])
    assert service["spec"].get("clusterIP") == "None", f"{service['metadata']['name']} is not headless"
    assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def test_dev_overlay_runs_its_own_redis(rendered):
    objects = rendered["overlays/dev"]
    redis = find(objects, "StatefulSet", "dt-redis")
    conf, ctr = redis_conf(objects, redis)
    assert conf["appendonly"] == "yes" and conf["dir"] == "/data" and conf["maxmemory-policy"] == "noeviction"
    # Full before the container's memory limit: writes are refused (RESOURCE_EXHAUSTED), not OOM-killed.
    assert memory_bytes(conf["maxmemory"]) <= 0.8 * memory_bytes(ctr["resources"]["limits"]["memory"])
    assert any(m["mountPath"] == "/data" for m in ctr["volumeMounts"])
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert_password_only_from_files(objects, redis)
    assert_headless_service_governs(objects, redis)
    service = find(objects, "Service", "dt-redis")
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    config = find(objects, "ConfigMap", "dt-scheduler-config")["data"]
    assert config["REDIS_ADDRESS"] == f"dt-redis:{service['spec']['ports'][0]['port']}"
    # The replicas may reach Redis, and Redis accepts them.
    policy = find(objects, "NetworkPolicy", "dt-scheduler")
    assert policy["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    redis_policy = find(objects, "NetworkPolicy", "dt-redis")
    scheduler_labels = find(objects, "Deployment", "dt-scheduler")["spec"]["template"]["metadata"]["labels"]
    assert redis_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= \
        scheduler_labels.items()
    deployment_env = container_env(objects, container(find(objects, "Deployment", "dt-scheduler")), "p")
    assert deployment_env["DT_REDIS_URL"] == f"redis://:{deployment_env['REDIS_PASSWORD']}@dt-redis:6379/0"


def test_dev_redis_runs_as_its_manifest_says(rendered, tmp_path):
    """The dev Redis' own start (script, redis.conf, the password from the mounted Secret) run locally: it
    asks the password of the replicas' Secret, has it in no process' argv, refuses writes past maxmemory."""
    objects = rendered["overlays/dev"]
    password = secret_data(objects, "dt-scheduler-redis")["password"].decode()
    (tmp_path / "data").mkdir()
    proc, port = start_redis([], tmp_path / "data",
                             command=redis_workload_command(objects, find(objects, "StatefulSet", "dt-redis"),
                                                            tmp_path / "pod"))
    try:
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port, password="wrong").ping()
        client = redis_lib.Redis(port=port, password=password)
        assert client.ping()
        conf, _ = redis_conf(objects, find(objects, "StatefulSet", "dt-redis"))
        assert client.config_get("maxmemory")["maxmemory"] == str(memory_bytes(conf["maxmemory"]))
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert password.encode() not in pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert password.encode() not in pathlib.Path(f"/proc/{proc.pid}/environ").read_bytes()
        client.config_set("maxmemory", 1)  # full: a write is refused, nothing is evicted
        with pytest.raises(redis_lib.exceptions.OutOfMemoryError):
            client.set("deploy-test-key", "x" * 1000)
    finally:
        stop_process(proc)


def test_redis_cluster_overlay(rendered):
    objects = rendered["overlays/redis-cluster"]
    config = find(objects, "ConfigMap", "dt-scheduler-config")["data"]
    assert config["DT_REDIS_CLUSTER"] == "1"
    assert not [o for o in objects if o["kind"] in ("Secret", "StatefulSet")]
    ctr = container(find(objects, "Deployment", "dt-scheduler"))
    assert ctr["image"].endswith("/dt-scheduler:0.1.0")
    egress = find(objects, "NetworkPolicy", "dt-scheduler")["spec"]["egress"]
    assert egress[0]["ports"] == [{"protocol": "TCP", "port": 6379}]
    # TLS to Redis: rediss:// with the CA of the dt-scheduler-redis-ca Secret, mounted read-only.
    env = {v["name"]: v.get("value") for v in ctr["env"]}
    url = urlparse(env["DT_REDIS_URL"])
    assert url.scheme == "rediss"
    ca = dict(parse_qsl(url.query))["ssl_ca_certs"]
    pod = find(objects, "Deployment", "dt-scheduler")["spec"]["template"]["spec"]
    mount = next(m for m in ctr["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True and volume["secret"]["secretName"] == "dt-scheduler-redis-ca"
    assert "optional" not in volume["secret"] and ca.endswith("/ca.crt")


def test_dockerfile_matches_the_manifests(rendered):
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text
    assert re.search(r"^FROM \$\{BASE\} AS builder$", text, re.M) and re.search(r"^FROM \$\{BASE\}$", text, re.M)
    assert 'ENTRYPOINT ["dt-scheduler"]' in text and 'CMD ["serve"]' in text
    assert re.search(r"^EXPOSE 4001 9090$", text, re.M)
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    pod = find(rendered["base"], "Deployment", "dt-scheduler")["spec"]["template"]["spec"]
    assert user and int(user.group(1)) == pod["securityContext"]["runAsUser"]
    assert int(user.group(2)) == pod["securityContext"]["runAsGroup"]
    assert "DT_HOST=0.0.0.0" in text and "DT_METRICS_PORT=9090" in text
    assert "COPY deploy/probe.py /opt/dt-scheduler/probe.py" in text
    # The final stage takes only the installed virtualenv from the builder: no wheels, pip or cache left in
    # a layer of it.
    final = text[re.search(r"^FROM \$\{BASE\}$", text, re.M).start():]
    assert re.findall(r"^COPY --from=builder (\S+)", final, re.M) == ["/opt/venv"]
    assert "pip" not in "".join(re.findall(r"^RUN .*(?:\n .*)*", final, re.M))
    # Provenance: OCI labels from build arguments; the revision reaches dt_build_info.
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("created", "CREATED"), ("source", "SOURCE")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in final and re.search(rf"^ARG {arg}=", final, re.M)
    assert "ENV DT_BUILD_REVISION=${REVISION}" in final
    # One place for the extras: the builder's ARG, which build-image.sh reads as its default.
    assert len(re.findall(r"^ARG EXTRAS=", text, re.M)) == 1
    assert "ARG EXTRAS=" in (DEPLOY / "build-image.sh").read_text()


def test_sentinel_overlay(rendered):
    """Primary + replicas + Sentinels: the service finds every Sentinel by name, monitors what they monitor,
    waits for one replica; persistence, memory and passwords as in the dev Redis; the network lets each part
    reach the others."""
    objects = rendered["overlays/sentinel"]
    config = find(objects, "ConfigMap", "dt-scheduler-config")["data"]
    servers = find(objects, "StatefulSet", "dt-redis")
    sentinels = find(objects, "StatefulSet", "dt-redis-sentinel")
    for workload in (servers, sentinels):
        assert_password_only_from_files(objects, workload)
        assert_headless_service_governs(objects, workload)
        assert workload["spec"]["replicas"] == 3
        find(objects, "PodDisruptionBudget", workload["metadata"]["name"])
        find(objects, "NetworkPolicy", workload["metadata"]["name"])
    sentinel_port = container(sentinels)["ports"][0]["containerPort"]
    assert config["DT_REDIS_SENTINELS"].split(",") == [
        f"dt-redis-sentinel-{i}.{sentinels['spec']['serviceName']}:{sentinel_port}" for i in range(3)]
    master = config["DT_REDIS_SENTINEL_MASTER"]
    sentinel_script = container(sentinels)["command"][2]
    server_script = container(servers)["command"][2]
    first_primary = f"dt-redis-0.{servers['spec']['serviceName']}"
    assert f"sentinel monitor {master} $primary 6379 2" in sentinel_script
    assert f'primary="{first_primary}"' in sentinel_script and f'primary="{first_primary}"' in server_script
    assert f"get-master-addr-by-name {master}" in sentinel_script and f"get-master-addr-by-name {master}" in server_script
    assert f'me="$HOSTNAME.{servers["spec"]["serviceName"]}"' in server_script
    # Durability: AOF, a replica acknowledges each write the service answers for, and the primary refuses
    # writes with no replica at all.
    conf, ctr = redis_conf(objects, servers)
    assert conf["appendonly"] == "yes" and conf["maxmemory-policy"] == "noeviction"
    assert memory_bytes(conf["maxmemory"]) <= 0.8 * memory_bytes(ctr["resources"]["limits"]["memory"])
    assert 1 <= int(config["DT_REDIS_MIN_REPLICA_ACKS"]) <= servers["spec"]["replicas"] - 1
    assert 1 <= int(conf["min-replicas-to-write"]) <= servers["spec"]["replicas"] - 1
    # The Sentinels' password reaches the service as a file of the same Secret the Sentinels read.
    deployment = find(objects, "Deployment", "dt-scheduler")
    env = {v["name"]: v.get("value") for v in container(deployment)["env"]}
    path = env["DT_REDIS_SENTINEL_PASSWORD_FILE"]
    mount = next(m for m in container(deployment)["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "dt-scheduler-redis"
    assert {"key": "sentinel-password", "path": path.rsplit("/", 1)[1]} in volume["secret"]["items"]
    assert "/etc/redis-secret/sentinel-password" in sentinel_script
    # The network: the service reaches servers (6379) and Sentinels (26379); each part admits the others.
    scheduler_labels = deployment["spec"]["template"]["metadata"]["labels"]
    egress = find(objects, "NetworkPolicy", "dt-scheduler")["spec"]["egress"]

    def reaches(rules: list[dict], labels: dict, port: int) -> bool:
        return any(port in {p["port"] for p in rule["ports"]} and
                   any(peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
                       and "namespaceSelector" not in peer for peer in rule["to"]) for rule in rules)

    def admits(policy: dict, labels: dict, port: int) -> bool:
        return any(port in {p["port"] for p in rule["ports"]} and
                   any(peer["podSelector"]["matchLabels"].items() <= labels.items() for peer in rule["from"])
                   for rule in policy["spec"]["ingress"])

    server_labels = servers["spec"]["template"]["metadata"]["labels"]
    sentinel_labels = sentinels["spec"]["template"]["metadata"]["labels"]
    server_policy, sentinel_policy = find(objects, "NetworkPolicy", "dt-redis"), find(objects, "NetworkPolicy",
                                                                                      "dt-redis-sentinel")
    for source_labels, source_egress in ((scheduler_labels, egress), (server_labels, server_policy["spec"]["egress"]),
                                         (sentinel_labels, sentinel_policy["spec"]["egress"])):
        assert reaches(source_egress, server_labels, 6379) and admits(server_policy, source_labels, 6379)
        assert reaches(source_egress, sentinel_labels, 26379) and admits(sentinel_policy, source_labels, 26379)


def test_sentinel_overlay_first_primary_runs_as_its_manifest_says(rendered, tmp_path):
    """dt-redis-0's own start, run locally where no Sentinel answers (a first start): it becomes the primary
    with the Secret's password (in no argv), announces its stable name, and refuses writes while no replica
    is connected (min-replicas-to-write) instead of running alone."""
    objects = rendered["overlays/sentinel"]
    servers = find(objects, "StatefulSet", "dt-redis")
    secret = tmp_path / "secret"  # the Secret is created outside the overlay: stand-in values
    objects = [*objects, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dt-scheduler-redis"},
                          "stringData": {"password": "test-data-password", "sentinel-password": "test-sentinel-pw"}}]
    (tmp_path / "data").mkdir()
    proc, port = start_redis([], tmp_path / "data", command=redis_workload_command(objects, servers, secret),
                             env={"HOSTNAME": "dt-redis-0"})
    try:
        client = redis_lib.Redis(port=port, password="test-data-password")
        assert client.info("replication")["role"] == "master"
        assert client.config_get("replica-announce-ip")["replica-announce-ip"] == "dt-redis-0.dt-redis-headless"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        for secret_value in (b"test-data-password", b"test-sentinel-pw"):
            assert secret_value not in pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        with pytest.raises(redis_lib.ResponseError, match="NOREPLICAS"):
            client.set("deploy-test-key", "x")
    finally:
        stop_process(proc)
