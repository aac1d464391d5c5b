"""Dapr's fork of the contract, as its SDK ships it: read the serialized descriptor from the source text
of a ``durabletask-dapr`` wheel's ``orchestrator_service_pb2.py`` (never imported: its ``durabletask``
package collides with the official SDK's), and render a descriptor as ``.proto`` text.

``protos/dapr/orchestrator_service.proto`` was rendered with::

    python -m scheduler._proto.dapr_contract durabletask_dapr-0.17.4-py3-none-any.whl > protos/dapr/orchestrator_service.proto

and a test compares the bindings generated from it with the wheel's descriptor. The one line added to
the SDK's contract is ``package``: without it Dapr's messages and ours (the same names) could not live in
one process. The gRPC service path stays ``/TaskHubSidecarService/<method>`` (see app.py).
"""
from __future__ import annotations

import ast
import sys
import zipfile

from google.protobuf import descriptor_pb2

PB2_PATH = "durabletask/internal/orchestrator_service_pb2.py"
PACKAGE = "dapr.durabletask"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {_F.TYPE_DOUBLE: "double", _F.TYPE_FLOAT: "float", _F.TYPE_INT64: "int64", _F.TYPE_UINT64: "uint64",
            _F.TYPE_INT32: "int32", _F.TYPE_FIXED64: "fixed64", _F.TYPE_FIXED32: "fixed32", _F.TYPE_BOOL: "bool",
            _F.TYPE_STRING: "string", _F.TYPE_BYTES: "bytes", _F.TYPE_UINT32: "uint32", _F.TYPE_SFIXED32: "sfixed32",
            _F.TYPE_SFIXED64: "sfixed64", _F.TYPE_SINT32: "sint32", _F.TYPE_SINT64: "sint64"}


def descriptor_from_source(source: str) -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto that a generated ``*_pb2.py`` adds with ``AddSerializedFile(b'...')``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
    raise ValueError("no AddSerializedFile(...) call in the module")


def descriptor_from_wheel(path: str) -> descriptor_pb2.FileDescriptorProto:
    with zipfile.ZipFile(path) as wheel:
        return descriptor_from_source(wheel.read(PB2_PATH).decode())


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return _SCALARS.get(field.type) or field.type_name.lstrip(".")


def _options(field: descriptor_pb2.FieldDescriptorProto) -> str:
    """A field's options as .proto text (only ``deprecated`` occurs; others are refused, not lost)."""
    options = dict((f.name, v) for f, v in field.options.ListFields())
    if set(options) - {"deprecated"}:
        raise ValueError(f"field {field.name}: options {sorted(options)} are not rendered")
    return " [deprecated = true]" if options.get("deprecated") else ""


def _render_message(msg: descriptor_pb2.DescriptorProto, indent: str, out: list[str]) -> None:
    out.append(f"{indent}message {msg.name} {{")
    maps = {n.name: n for n in msg.nested_type if n.options.map_entry}
    for nested in msg.nested_type:
        if not nested.options.map_entry:
            _render_message(nested, indent + "  ", out)
    for enum in msg.enum_type:
        _render_enum(enum, indent + "  ", out)
    real_oneofs = {f.oneof_index for f in msg.field if f.HasField("oneof_index") and not f.proto3_optional}
    done_oneofs: set[int] = set()
    for field in msg.field:
        if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
            index = field.oneof_index
            if index in done_oneofs:
                continue
            done_oneofs.add(index)
            out.append(f"{indent}  oneof {msg.oneof_decl[index].name} {{")
            for member in msg.field:
                if member.HasField("oneof_index") and member.oneof_index == index:
                    out.append(f"{indent}    {_type(member)} {member.name} = {member.number}{_options(member)};")
            out.append(f"{indent}  }}")
            continue
        entry = maps.get(field.type_name.rsplit(".", 1)[-1]) if field.type == _F.TYPE_MESSAGE else None
        if entry is not None and field.label == _F.LABEL_REPEATED:
            key, value = entry.field
            out.append(f"{indent}  map<{_type(key)}, {_type(value)}> {field.name} = {field.number}{_options(field)};")
            continue
        label = "repeated " if field.label == _F.LABEL_REPEATED else "optional " if field.proto3_optional else ""
        out.append(f"{indent}  {label}{_type(field)} {field.name} = {field.number}{_options(field)};")
    out.append(f"{indent}}}")


def _render_enum(enum: descriptor_pb2.EnumDescriptorProto, indent: str, out: list[str]) -> None:
    out.append(f"{indent}enum {enum.name} {{")
    out.extend(f"{indent}  {value.name} = {value.number};" for value in enum.value)
    out.append(f"{indent}}}")


def render(fd: descriptor_pb2.FileDescriptorProto, header: str) -> str:
    out = [header.rstrip(), 'syntax = "proto3";', "", f"package {PACKAGE};", ""]
    for name, value in fd.options.ListFields():
        out.append(f'option {name.name} = "{value}";')
    out.append("")
    out.extend(f'import "{dep}";' for dep in fd.dependency)
    out.append("")
    for enum in fd.enum_type:
        _render_enum(enum, "", out)
        out.append("")
    for msg in fd.message_type:
        _render_message(msg, "", out)
        out.append("")
    for service in fd.service:
        out.append(f"service {service.name} {{")
        for m in service.method:
            stream = "stream " if m.server_streaming else ""
            out.append(f"  rpc {m.name}({m.input_type.lstrip('.')}) returns ({stream}{m.output_type.lstrip('.')});")
        out.append("}")
    return "\n".join(out) + "\n"


HEADER = """\
// Dapr's fork of the DurableTask contract, rendered from the descriptor that durabletask-dapr {version}
// ships (durabletask/internal/orchestrator_service_pb2.py; proto source commit {commit}) by
// `python -m scheduler._proto.dapr_contract <wheel>`. Field names and numbers are the SDK's; do not edit
// by hand. Ours: the `package` line (the SDK's file has none), so that these messages and those of
// protos/orchestrator_service.proto can be loaded in one process. On the wire the service is still
// `/TaskHubSidecarService/<method>` (registered so in scheduler/app.py).
"""


def main(argv: list[str]) -> int:
    wheel = argv[1]
    version = wheel.rsplit("/", 1)[-1].split("-")[1]
    with zipfile.ZipFile(wheel) as z:
        commit = z.read("durabletask/internal/PROTO_SOURCE_COMMIT_HASH").decode().strip()
    sys.stdout.write(render(descriptor_from_wheel(wheel), HEADER.format(version=version, commit=commit)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
