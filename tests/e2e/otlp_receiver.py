"""An OTLP trace receiver for the tests: a gRPC ``TraceService`` (from opentelemetry-proto) on a free
loopback port, and beside it the HTTP/protobuf endpoint (``POST /v1/traces``) on another, that keep
every span they are sent, with its resource's ``service.name``."""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root span
    service: str  # service.name of its resource
    attributes: dict
    start_ns: int
    end_ns: int
    error: bool
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(body), None)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def start(self) -> OtlpReceiver:
        self._server.start()
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.stop(0)
        self._http.shutdown()
        self._http.server_close()

    @property
    def endpoint(self) -> str:
        """The OTLP/gRPC endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_endpoint(self) -> str:
        """The OTLP/HTTP endpoint (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def Export(self, request, context):  # noqa: N802 - the protocol's name
        received = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(Span(
                        s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                        attrs.get("service.name", ""),
                        {a.key: _value(a.value) for a in s.attributes}, s.start_time_unix_nano, s.end_time_unix_nano,
                        s.status.code == 2, _KINDS.get(s.kind, "UNSPECIFIED")))
        with self._changed:
            self._spans += received
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Span]:
        with self._changed:
            return list(self._spans)

    def wait_for(self, predicate: Callable[[list[Span]], object], timeout: float, what: str) -> list[Span]:
        """Wait until ``predicate(spans)`` is truthy, and return the spans; AssertionError naming ``what`` at the
        deadline."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(list(self._spans)), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; spans: "
                                     f"{[(s.name, s.trace_id[:8], s.span_id, s.parent_id) for s in self._spans]}")
            return list(self._spans)
