"""Generated bindings of Dapr's fork of the contract (``protos/dapr/orchestrator_service.proto``, proto
package ``dapr.durabletask``). Do not edit the ``orchestrator_service_pb2*`` files by hand; run
``python -m scheduler._proto.regen``.
"""
