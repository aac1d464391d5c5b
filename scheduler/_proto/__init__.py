"""Generated protobuf/gRPC bindings for the TaskHubSidecarService contract.

Do not edit the ``orchestrator_service_pb2*`` files by hand; edit
``protos/orchestrator_service.proto`` and run ``python -m scheduler._proto.regen``.
"""
