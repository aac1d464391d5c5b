"""deploy/components/workload-identity: the replicas with the component render and validate strictly,
mount the cluster's JWKS from a ConfigMap where DT_AUTH_JWKS_FILE points, and expect the audience
the example worker's projected ServiceAccount token asks for; the example validates too."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from deploy_helpers import DEPLOY, container, find, kubectl
from jwt_keys import SigningKey, write_jwks

COMPONENT = DEPLOY / "components/workload-identity"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """The base with the component, as an overlay that uses it renders."""
    root = tmp_path_factory.mktemp("workload-identity")
    rel = os.path.relpath(DEPLOY, root)
    (root / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel}/base]\ncomponents: [{rel}/components/workload-identity]\n")
    result = subprocess.run([kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def example() -> list[dict]:
    return [d for d in yaml.safe_load_all((COMPONENT / "worker-example.yaml").read_text()) if d]


def env_of(ctr: dict) -> dict[str, str]:
    return {v["name"]: v["value"] for v in ctr["env"] if "value" in v}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_component_and_the_example_validate_strictly(rendered, example, version):
    for obj in rendered + example:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_jwks_is_mounted_where_the_replicas_read_it_and_the_audiences_agree(rendered, example, tmp_path):
    deployment = find(rendered, "Deployment", "dt-scheduler")
    ctr, pod = container(deployment), deployment["spec"]["template"]["spec"]
    env = env_of(ctr)
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "jwks")
    volume = next(v for v in pod["volumes"] if v["name"] == "jwks")
    assert mount["readOnly"] is True and "subPath" not in mount  # without subPath, ConfigMap updates arrive
    assert volume["configMap"]["name"] == "dt-scheduler-jwks"
    paths = {os.path.join(mount["mountPath"], item["path"]) for item in volume["configMap"]["items"]}
    assert env["DT_AUTH_JWKS_FILE"] in paths
    assert "DT_AUTH_TOKENS_FILE" in env  # the subjects live there

    # The example worker asks for the audience the replicas check, and has no other API token.
    worker = find(example, "Deployment", "orders-worker")
    worker_pod = worker["spec"]["template"]["spec"]
    sources = [s for v in worker_pod["volumes"] for s in v.get("projected", {}).get("sources", [])]
    audiences = {s["serviceAccountToken"]["audience"] for s in sources if "serviceAccountToken" in s}
    assert audiences == {env["DT_AUTH_JWT_AUDIENCE"]}
    assert worker_pod["automountServiceAccountToken"] is False
    assert find(example, "ServiceAccount", worker_pod["serviceAccountName"])
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert labels.get("dt-scheduler/worker") == "true"  # the replicas' NetworkPolicy admits it

    # The settings are ones `dt-scheduler serve` takes, and together they make a valid configuration.
    from scheduler import config as cfg
    tokens, jwks = tmp_path / "tokens.json", tmp_path / "jwks.json"
    tokens.write_text('{"tokens": []}')
    write_jwks(jwks, SigningKey("RS256"))
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    environ = {k: v for k, v in env.items() if k.startswith("DT_AUTH_")}
    environ.update(DT_AUTH_TOKENS_FILE=str(tokens), DT_AUTH_JWKS_FILE=str(jwks))
    config = cfg.from_args(parser.parse_args([]), environ)
    assert (config.auth_jwt_audience, config.auth_jwt_issuer) == (env["DT_AUTH_JWT_AUDIENCE"],
                                                                   env["DT_AUTH_JWT_ISSUER"])
    help_text = subprocess.run([sys.executable, "-m", "scheduler", "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for name in env:
        assert not name.startswith("DT_AUTH_") or name in help_text, name
