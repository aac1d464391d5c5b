"""OpenTelemetry traces of orchestrations, emitted by whichever replica sees a span end.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (read by config.py; the exporter reads its
own ``OTEL_EXPORTER_OTLP_*`` variables, the resource ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``). When off, :data:`active` is None and that check is all a
caller does.

Replicas are stateless and an orchestration's episodes run anywhere, so no span lives in a
process: the orchestration span's ids are chosen when the instance is created and kept in its
hash (field ``trace``: trace id, span id and, under a caller's span, the parent span id, 64 hex
characters at most, so the hash keeps its compact encoding), and every span is emitted whole,
with explicit ids and start and end times, when its end is known: a ``ReadableSpan`` handed to
the span processor (the batching exporter). The ids of an orchestration's children (its
activities, timers, the SDK worker's own orchestration span) are derived from the orchestration
span id, the execution id and the task id, so any replica computes the same id when it schedules the task (and
hands it to the worker) and when it sees the task end.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from . import logs

TRACE_EXPORTERS = ("otlp", "console", "none")


def check_settings(exporter: str | None, protocol: str | None) -> None:
    """ValueError naming the variable unless OTEL_TRACES_EXPORTER and the OTLP protocol are ones we serve."""
    for name in (exporter or "").split(","):
        if name.strip() and name.strip() not in TRACE_EXPORTERS:
            raise ValueError(f"OTEL_TRACES_EXPORTER: {name.strip()!r} is not one of {', '.join(TRACE_EXPORTERS)}")
    if protocol not in (None, "grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not grpc or http/protobuf")


log = logging.getLogger(__name__)

TRACER_NAME = "dt-scheduler"
active: Tracing | None = None  # None: tracing is off


@dataclass(frozen=True)
class SpanRef:
    """An orchestration span's ids: what the instance hash keeps in ``trace``."""

    trace_id: int
    span_id: int
    parent_id: int | None = None  # the caller's span (the client's, or the worker's for a sub-orchestration)

    def encode(self) -> str:
        parent = "" if self.parent_id is None else f"{self.parent_id:016x}"
        return f"{self.trace_id:032x}{self.span_id:016x}{parent}"

    @staticmethod
    def decode(raw: bytes | str) -> SpanRef | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            return SpanRef(int(text[:32], 16), int(text[32:48], 16), int(text[48:64], 16) if len(text) == 64 else None)
        except ValueError:
            return None

    def traceparent(self, span_id: int | None = None) -> str:
        """The W3C traceparent of this span (or of ``span_id`` in its trace); always sampled: an
        unsampled orchestration has no SpanRef."""
        return f"00-{self.trace_id:032x}-{self.span_id if span_id is None else span_id:016x}-01"

    def child(self, kind: str, key: int | str) -> int:
        """The id of this span's child ``kind`` (activity, timer, worker) number ``key``: the same on every
        replica."""
        digest = hashlib.blake2b(f"{self.span_id:016x}/{kind}/{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") or 1


def parse_traceparent(text: str) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a W3C traceparent, or None when it is not a valid one."""
    parts = text.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(flags & 1)


def ref_of(fields: dict[str, bytes]) -> SpanRef | None:
    """The orchestration span of an instance hash, when tracing is on and it has one."""
    if active is None:
        return None
    raw = fields.get("trace")
    return None if raw is None else SpanRef.decode(raw)


def new_span_id() -> int:
    return random.getrandbits(64) or 1


class Tracing:
    """The tracer of this process: the sampler, the resource and the span processor."""

    def __init__(self, processor, resource, sampler) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        self._otel = trace
        self._readable, self._context, self._flags = ReadableSpan, SpanContext, TraceFlags
        self._status, self._code, self.kinds = Status, StatusCode, SpanKind
        self._scope = InstrumentationScope(TRACER_NAME)
        self.processor, self.resource, self.sampler = processor, resource, sampler

    def new_orchestration(self, name: str, parent_traceparent: str | None) -> SpanRef | None:
        """The ids of a new orchestration span: in the caller's trace (``parent_traceparent``) or a new one;
        None when the sampler (parent-based by default: the caller's sampled flag) drops it."""
        parsed = parse_traceparent(parent_traceparent) if parent_traceparent else None
        trace_id = parsed[0] if parsed else random.getrandbits(128) or 1
        parent_ctx = None
        if parsed:
            flags = self._flags(self._flags.SAMPLED if parsed[2] else self._flags.DEFAULT)
            span_ctx = self._context(parsed[0], parsed[1], is_remote=True, trace_flags=flags)
            parent_ctx = self._otel.set_span_in_context(self._otel.NonRecordingSpan(span_ctx))
        decision = self.sampler.should_sample(parent_ctx, trace_id, f"orchestration:{name}")
        if not decision.decision.is_sampled():
            return None
        return SpanRef(trace_id, new_span_id(), parsed[1] if parsed else None)

    def emit(self, name: str, trace_id: int, span_id: int, parent_id: int | None, start_ns: int,
             end_ns: int | None = None, attributes: dict | None = None, kind: str = "INTERNAL",
             error: str | None = None) -> None:
        """Hand one finished span to the exporter. Never raises: tracing must not break the work."""
        try:
            sampled = self._flags(self._flags.SAMPLED)
            context = self._context(trace_id, span_id, is_remote=False, trace_flags=sampled)
            parent = None if parent_id is None else self._context(trace_id, parent_id, is_remote=True,
                                                                   trace_flags=sampled)
            status = self._status(self._code.ERROR, error) if error is not None else self._status(self._code.UNSET)
            end = time.time_ns() if end_ns is None else end_ns
            self.processor.on_end(self._readable(
                name=name, context=context, parent=parent, kind=getattr(self.kinds, kind),
                attributes=attributes or {}, start_time=min(start_ns, end), end_time=end,
                resource=self.resource, instrumentation_scope=self._scope, status=status))
        except Exception:  # noqa: BLE001 - a span is not worth a failed call
            log.warning("could not emit span %r", name, exc_info=True)

    def shutdown(self) -> None:
        self.processor.shutdown()


def configure(exporters: str | None, protocol: str | None = None) -> None:
    """Turn tracing on for this process when ``exporters`` (OTEL_TRACES_EXPORTER, checked by config.py)
    names one, OTLP over ``protocol`` (grpc or http/protobuf); without the ``[otel]`` extra installed,
    one warning and tracing stays off."""
    global active
    names = [n for n in (exporters or "").split(",") if n.strip() and n.strip() != "none"]
    if not names:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=%s asks for traces but the OpenTelemetry SDK is not installed "
                    "(pip install 'dt-redis-scheduler[otel]'): tracing is off", exporters)
        return
    processor = SynchronousMultiSpanProcessor()
    for name in (n.strip() for n in names):
        if name == "console":
            processor.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            continue
        try:
            exporter = _otlp_exporter(protocol)
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp but the OTLP exporter is not installed "
                        "(pip install 'dt-redis-scheduler[otel]'): tracing is off")
            return
        processor.add_span_processor(BatchSpanProcessor(exporter))
    sampler = TracerProvider().sampler  # OTEL_TRACES_SAMPLER and _ARG, as the SDK reads them
    active = Tracing(processor, Resource.create(), sampler)
    log.info("tracing on: %s, service.name %r", ",".join(names), active.resource.attributes.get("service.name"))


def _otlp_exporter(protocol: str | None):
    """The OTLP span exporter (it reads OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _TIMEOUT, ... itself)."""
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:  # grpc, the default
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


SHUTDOWN_SECONDS = 5.0  # the most a replica's exit waits for its last spans to go out


def shutdown() -> None:
    """Turn tracing off and flush what is left (at the end of the process), waiting at most
    SHUTDOWN_SECONDS: a collector that is away must not hold up a replica's exit."""
    global active
    if active is None:
        return
    tracer, active = active, None
    flushing = threading.Thread(target=tracer.shutdown, name="otel-shutdown", daemon=True)
    flushing.start()
    flushing.join(SHUTDOWN_SECONDS)


@contextlib.contextmanager
def logged(ref: SpanRef | None) -> Iterator[None]:
    """Log lines written inside carry the trace and span ids of ``ref`` (JSON logs: ``trace_id``, ``span_id``)."""
    if ref is None:
        yield
        return
    token = logs.trace.set((f"{ref.trace_id:032x}", f"{ref.span_id:016x}"))
    try:
        yield
    finally:
        logs.trace.reset(token)
