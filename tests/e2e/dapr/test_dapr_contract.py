"""Our rendering of Dapr's contract (protos/dapr/orchestrator_service.proto) says what the SDK's
descriptor says: every message, field (name, number, type, label, oneof), enum, option and RPC.

The SDK's descriptor is read from its wheel's source text, never imported (its ``durabletask`` package is
the official SDK's name too). Ours differs by the ``package`` line only (see the .proto's header)."""
from __future__ import annotations

from google.protobuf import descriptor_pb2

from scheduler._proto.dapr import orchestrator_service_pb2 as dapr_pb
from scheduler._proto.dapr_contract import PACKAGE, descriptor_from_wheel


def _normalized(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    fd.ClearField("name")
    fd.ClearField("package")
    prefix = f".{PACKAGE}."

    def fix_message(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            if field.type_name.startswith(prefix):
                field.type_name = "." + field.type_name[len(prefix):]
        for nested in message.nested_type:
            fix_message(nested)

    for message in fd.message_type:
        fix_message(message)
    for service in fd.service:
        for method in service.method:
            for attr in ("input_type", "output_type"):
                value = getattr(method, attr)
                if value.startswith(prefix):
                    setattr(method, attr, "." + value[len(prefix):])
    return fd


def test_our_dapr_contract_is_the_sdks(dapr_wheel):
    theirs = _normalized(descriptor_from_wheel(str(dapr_wheel)))
    ours = descriptor_pb2.FileDescriptorProto()
    dapr_pb.DESCRIPTOR.CopyToProto(ours)
    ours = _normalized(ours)
    assert ours.package == theirs.package == ""
    for what in ("dependency", "options", "enum_type", "service"):
        assert getattr(ours, what) == getattr(theirs, what), what
    assert [m.name for m in ours.message_type] == [m.name for m in theirs.message_type]
    for mine, sdk in zip(ours.message_type, theirs.message_type):
        assert mine == sdk, mine.name


def test_the_package_keeps_dapr_messages_apart_from_ours():
    """The service's full name carries our package; Dapr's SDKs call the path without it (app.py registers
    that one)."""
    service = dapr_pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
    assert service.full_name == f"{PACKAGE}.TaskHubSidecarService"
    assert dapr_pb.HistoryEvent.DESCRIPTOR.full_name == f"{PACKAGE}.HistoryEvent"
