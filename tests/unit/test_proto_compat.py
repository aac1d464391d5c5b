"""Our protos/orchestrator_service.proto must be wire-identical to the SDK's.

Both generated modules define the same unqualified symbols (no ``package``), so
they cannot share the default descriptor pool of one interpreter. Each side is
therefore described by ``_describe`` in its own subprocess and the normalized
descriptions are compared here.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS = "scheduler._proto.orchestrator_service_pb2"
SDK = "durabletask.internal.orchestrator_service_pb2"


def _describe(module_name: str) -> dict:
    """Flatten a generated module's file descriptor into {key: properties}.

    Runs in a subprocess, so it must be self-contained (imports inside).
    """
    import importlib

    from google.protobuf import descriptor_pb2

    fd = importlib.import_module(module_name).DESCRIPTOR
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    FDP = descriptor_pb2.FieldDescriptorProto
    out: dict = {
        "file": {
            "package": proto.package,
            "syntax": proto.syntax,
            "dependencies": sorted(proto.dependency),
            "java_package": proto.options.java_package,
            "go_package": proto.options.go_package,
            "csharp_namespace": proto.options.csharp_namespace,
        }
    }

    def walk_message(msg, prefix: str) -> None:
        full = f"{prefix}{msg.name}"
        runtime = fd.pool.FindMessageTypeByName(full)
        out[f"message {full}"] = {
            "map_entry": msg.options.map_entry,
            "oneofs": [o.name for o in msg.oneof_decl],
            "reserved_ranges": [[r.start, r.end] for r in msg.reserved_range],
            "reserved_names": sorted(msg.reserved_name),
        }
        for f in msg.field:
            has_type_name = f.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM)
            out[f"message {full} / field {f.name}"] = {
                "number": f.number,
                "type": FDP.Type.Name(f.type),
                "label": FDP.Label.Name(f.label),
                "type_name": f.type_name if has_type_name else None,
                "oneof": msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
                "proto3_optional": f.proto3_optional,
                "json_name": runtime.fields_by_name[f.name].json_name,
                "deprecated": f.options.deprecated,
                "default_value": f.default_value,
            }
        for nested in msg.nested_type:
            walk_message(nested, f"{full}.")
        for enum in msg.enum_type:
            walk_enum(enum, f"{full}.")

    def walk_enum(enum, prefix: str) -> None:
        full = f"{prefix}{enum.name}"
        out[f"enum {full}"] = {"allow_alias": enum.options.allow_alias}
        for v in enum.value:
            out[f"enum {full} / value {v.name}"] = {"number": v.number}

    prefix = f"{proto.package}." if proto.package else ""
    for msg in proto.message_type:
        walk_message(msg, prefix)
    for enum in proto.enum_type:
        walk_enum(enum, prefix)
    for svc in proto.service:
        full = f"{prefix}{svc.name}"
        out[f"service {full}"] = {"method_count": len(svc.method)}
        for m in svc.method:
            out[f"service {full} / method {m.name}"] = {
                "path": f"/{full}/{m.name}",
                "input_type": m.input_type,
                "output_type": m.output_type,
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
    return out


def _describe_in_subprocess(module_name: str) -> dict:
    code = (
        textwrap.dedent(inspect.getsource(_describe))
        + f"\nimport json\nprint(json.dumps(_describe({module_name!r})))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"describing {module_name} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _diff(ours: dict, sdk: dict) -> list[str]:
    lines = []
    for key in sorted(sdk.keys() - ours.keys()):
        lines.append(f"- missing in ours: {key} {sdk[key]}")
    for key in sorted(ours.keys() - sdk.keys()):
        lines.append(f"+ only in ours:    {key} {ours[key]}")
    for key in sorted(ours.keys() & sdk.keys()):
        for prop in sorted(ours[key].keys() | sdk[key].keys()):
            a, b = ours[key].get(prop), sdk[key].get(prop)
            if a != b:
                lines.append(f"~ {key}: {prop}: ours={a!r} sdk={b!r}")
    return lines


def test_descriptor_matches_sdk() -> None:
    sdk = _describe_in_subprocess(SDK)
    ours = _describe_in_subprocess(OURS)

    # Guard against a vacuous pass (e.g. a dump that found nothing).
    assert sum(k.startswith("message ") for k in sdk) > 100
    assert "service TaskHubSidecarService / method StartInstance" in sdk

    diff = _diff(ours, sdk)
    if diff:
        pytest.fail(
            f"{len(diff)} difference(s) between protos/orchestrator_service.proto and "
            f"the durabletask SDK descriptor:\n" + "\n".join(diff),
            pytrace=False,
        )


def test_grpc_module_uses_unqualified_service_paths() -> None:
    text = (REPO_ROOT / "scheduler/_proto/orchestrator_service_pb2_grpc.py").read_text()
    assert "from scheduler._proto import orchestrator_service_pb2 as" in text
    assert "'/TaskHubSidecarService/StartInstance'" in text
