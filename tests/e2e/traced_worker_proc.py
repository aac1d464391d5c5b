"""An SDK worker that traces (the OpenTelemetry SDK exporting over OTLP/gRPC, as the OTEL_* variables say), in
its own process so that its tracer provider is not this test session's: `python traced_worker_proc.py ADDRESS`.
It runs until its stdin closes, then flushes its spans and exits."""
from __future__ import annotations

import sys

from durabletask import task, worker
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def traced_greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}"


def traced_one(ctx: task.OrchestrationContext, name: str):
    return (yield ctx.call_activity(traced_greet, input=name))


if __name__ == "__main__":
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    w = worker.TaskHubGrpcWorker(host_address=sys.argv[1])
    w.add_orchestrator(traced_one)
    w.add_activity(traced_greet)
    w.start()
    print("WORKER READY", flush=True)
    sys.stdin.read()
    w.stop()
    provider.shutdown()
