"""deploy/components/monitoring: the PodMonitor scrapes what the Deployment serves, the alerts pass
`promtool check rules` and their unit tests (`promtool test rules`, alerts_test.yaml), and every series the
alerts and the Grafana dashboard read is one the service (or kube-state-metrics, or Prometheus) exports."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import crd_schemas
from deploy_helpers import DEPLOY, container, find, render

HERE = Path(__file__).resolve().parent
COMPONENT = DEPLOY / "components/monitoring"
WITH_MONITORING = ["overlays/redis-cluster", "overlays/sentinel"]
# Series from outside the service: Prometheus' own, and kube-state-metrics' (Deployment availability).
EXTERNAL = {"up", "kube_deployment_status_replicas_unavailable"}
SERIES_NAME = re.compile(r"\b(dt_[a-z0-9_]+|kube_[a-z0-9_]+|up)\b")

# The names of every series the service exports, from its metric registry (in a subprocess: importing the
# service registers its metrics in that process).
_LIST_SERIES = """
import prometheus_client
import scheduler.app, scheduler.engine.dispatcher, scheduler.engine.promoter, scheduler.store.common
import scheduler.api.interceptors, scheduler.api.tokens
scheduler.api.tokens.tokens_file_valid()  # registered with the first tokens file
suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["_sum", "_count", ""], "info": ["_info"]}
for family in prometheus_client.REGISTRY.collect():
    for suffix in suffixes.get(family.type, [""]):
        print(family.name + suffix)
"""


@pytest.fixture(scope="module")
def service_series() -> set[str]:
    out = subprocess.run([sys.executable, "-c", _LIST_SERIES], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    names = set(out.split())
    assert {"dt_rpc_requests_total", "dt_promotion_lag_seconds_bucket", "dt_build_info",
            "dt_leases_expired_total"} <= names
    return names


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {k: render(k) for k in WITH_MONITORING}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus package, which has it)")
    return path


def rule_spec(objects: list[dict]) -> dict:
    return find(objects, "PrometheusRule", "dt-scheduler")["spec"]


def dashboard_file() -> dict:
    return json.loads((COMPONENT / "dt-scheduler-dashboard.json").read_text())


def exprs_of_dashboard(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


@pytest.mark.parametrize("overlay", WITH_MONITORING)
def test_the_pod_monitor_scrapes_every_replica(rendered, overlay):
    objects = rendered[overlay]
    monitor = find(objects, "PodMonitor", "dt-scheduler")
    jsonschema.validate(monitor, crd_schemas.POD_MONITOR)
    deployment = find(objects, "Deployment", "dt-scheduler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in container(deployment)["ports"]}
    assert all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["podMetricsEndpoints"])
    # job="dt-scheduler", which the alerts select on, comes from this pod label.
    assert labels[monitor["spec"]["jobLabel"]] == "dt-scheduler"
    assert any('job="dt-scheduler"' in r["expr"] for g in rule_spec(objects)["groups"] for r in g["rules"])
    # Same namespace as the pods (the PodMonitor selects there by default) and Prometheus may reach them.
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_promtool_checks_and_unit_tests_the_alerts(rendered, tmp_path):
    tool = promtool()
    spec = rule_spec(rendered["overlays/sentinel"])
    assert spec == rule_spec(rendered["overlays/redis-cluster"])
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    check = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tests_text = (HERE / "alerts_test.yaml").read_text()
    assert "\n  - RULES\n" in tests_text
    unit = tmp_path / "alerts_test.yaml"
    unit.write_text(tests_text.replace("\n  - RULES\n", f"\n  - {rules.name}\n"))
    result = subprocess.run([tool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has a unit test that makes it fire and one moment where it must not.
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    cases = [case for test in yaml.safe_load(tests_text)["tests"] for case in test["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == alerts
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == alerts


def test_alerts_and_dashboard_read_series_that_exist(rendered, service_series):
    exprs = [r["expr"] for g in rule_spec(rendered["overlays/sentinel"])["groups"] for r in g["rules"]]
    exprs += exprs_of_dashboard(dashboard_file())
    assert exprs
    known = service_series | EXTERNAL
    unknown = {name for expr in exprs for name in SERIES_NAME.findall(expr)} - known
    assert not unknown, f"series no one exports: {sorted(unknown)}"
    # And the dashboard shows what the brief of each alert is about.
    shown = {name for expr in exprs_of_dashboard(dashboard_file()) for name in SERIES_NAME.findall(expr)}
    assert {"dt_ready_oldest_age_seconds", "dt_promotion_lag_seconds_bucket", "dt_redis_errors_total",
            "dt_leases_expired_total", "dt_redis_dataset_lost", "dt_build_info"} <= shown


def test_the_dashboard_configmap_is_the_file_grafana_loads(rendered):
    for overlay in WITH_MONITORING:
        config_map = find(rendered[overlay], "ConfigMap", "dt-scheduler-dashboard")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(config_map["data"]["dt-scheduler-dashboard.json"]) == dashboard_file()
    dashboard = dashboard_file()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["title"] and panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            # every query is scoped to the chosen namespace, and names only variables the dashboard has
            assert 'namespace="$namespace"' in target["expr"], target["expr"]
            assert set(re.findall(r"\$(?!__)(\w+)", target["expr"])) <= variables, target["expr"]
