"""Schemas for the Prometheus Operator's custom resources the manifests use (monitoring.coreos.com/v1
PodMonitor and PrometheusRule). kubernetes-validate knows only Kubernetes' own kinds, so these objects are
validated against the part of the Operator's CRD schemas that the manifests use: the field names, types
and duration format of the upstream CRDs (prometheus-operator v0.7x), strict — an unknown or misspelt
field is an error, as kubernetes-validate's strict mode makes it for the built-in kinds. Fields the
manifests do not use are left out (adding one means adding it here, from the upstream CRD)."""
from __future__ import annotations

# The Operator's Duration type (monitoringv1.Duration).
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP}}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": STRING_MAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"], "additionalProperties": False,
        "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}


def _kind(kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                           "metadata": METADATA, "spec": spec}}


POD_MONITOR = _kind("PodMonitor", {
    "type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
        "jobLabel": {"type": "string"},
        "selector": LABEL_SELECTOR,
        "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
            "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "podMetricsEndpoints": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "properties": {
                "port": {"type": "string"}, "path": {"type": "string"},
                "scheme": {"enum": ["http", "https"]}, "interval": DURATION, "scrapeTimeout": DURATION,
                "honorLabels": {"type": "boolean"}}}}}})

PROMETHEUS_RULE = _kind("PrometheusRule", {
    "type": "object", "additionalProperties": False, "properties": {
        "groups": {"type": "array", "items": {
            "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {
                        "alert": {"type": "string"}, "record": {"type": "string"},
                        "expr": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        "for": DURATION, "keep_firing_for": DURATION,
                        "labels": STRING_MAP, "annotations": STRING_MAP}}}}}}}})

SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
           ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE}
