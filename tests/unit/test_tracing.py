"""Tracing without a network: the ids an instance keeps, the OTEL_* variables, the warning without the
extra, spans emitted with explicit ids and times, the sampler, and trace ids in JSON logs."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from scheduler import config as cfg
from scheduler import logs, tracing
from scheduler.tracing import SpanRef, parse_traceparent


def parse(environ: dict[str, str]) -> cfg.Config:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.from_args(parser.parse_args([]), environ)


@pytest.fixture
def exported():
    """Tracing on for the test, into memory (ALWAYS_ON under a parent-based sampler, as the SDK's default)."""
    exporter = InMemorySpanExporter()
    tracing.active = tracing.Tracing(SimpleSpanProcessor(exporter), Resource.create({"service.name": "unit"}),
                                     ParentBased(ALWAYS_ON))
    yield exporter
    tracing.active = None


def test_the_ids_an_instance_keeps_fit_a_compact_hash_value_and_read_back():
    with_parent = SpanRef(0xABC << 100, 0x1234, 0x5678)
    root = SpanRef(7, 8)
    assert len(with_parent.encode()) == 64 and len(root.encode()) == 48  # Redis' listpack values: up to 64
    assert SpanRef.decode(with_parent.encode().encode()) == with_parent
    assert SpanRef.decode(root.encode()) == root
    assert SpanRef.decode(b"not hex at all, not hex at all, not hex at all!!") is None
    assert root.traceparent() == f"00-{7:032x}-{8:016x}-01"


def test_child_ids_are_the_same_everywhere_and_differ_by_kind_and_task():
    ref = SpanRef(1, 2)
    ids = {ref.child("activity", 1), ref.child("activity", 2), ref.child("timer", 1), ref.child("worker", 0)}
    assert len(ids) == 4 and ref.span_id not in ids
    assert ref.child("activity", 1) == SpanRef(1, 2).child("activity", 1)
    assert SpanRef(1, 3).child("activity", 1) != ref.child("activity", 1)


@pytest.mark.parametrize("text, parsed", [
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", (0x0af7651916cd43dd8448eb211c80319c,
                                                                0xb7ad6b7169203331, True)),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", (0x0af7651916cd43dd8448eb211c80319c,
                                                                0xb7ad6b7169203331, False)),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),  # all-zero trace id
    ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
    ("00-0af7651916cd43dd-b7ad6b7169203331-01", None),
    ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
    ("garbage", None),
])
def test_traceparents_are_read_by_the_w3c_rules(text, parsed):
    assert parse_traceparent(text) == parsed


def test_tracing_is_off_unless_otel_traces_exporter_names_an_exporter():
    assert parse({}).traces_exporter is None
    assert parse({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}).traces_exporter is None
    on = parse({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert (on.traces_exporter, on.traces_protocol) == ("otlp", "http/protobuf")
    assert parse({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}).traces_exporter is None
    traces_only = parse({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert traces_only.traces_protocol == "http/protobuf"  # the signal's own variable wins


@pytest.mark.parametrize("environ, named", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
])
def test_an_exporter_or_protocol_it_cannot_serve_is_refused_by_name(environ, named):
    with pytest.raises(ValueError, match=named):
        parse(environ)


def test_without_the_otel_extra_one_warning_and_tracing_stays_off(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)  # import fails, as when not installed
    with caplog.at_level(logging.WARNING, logger="scheduler.tracing"):
        tracing.configure("otlp")
    assert tracing.active is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "[otel]" in warnings[0].getMessage()


def test_none_and_nothing_configure_nothing():
    tracing.configure(None)
    tracing.configure("none")
    assert tracing.active is None


def test_a_span_is_emitted_whole_with_the_ids_and_times_given(exported):
    tracing.active.emit("activity:x", 11, 22, 33, 1_000, 5_000, {"k": "v"}, kind="CLIENT", error="boom")
    span, = exported.get_finished_spans()
    assert (span.context.trace_id, span.context.span_id, span.parent.span_id) == (11, 22, 33)
    assert (span.start_time, span.end_time, span.name) == (1_000, 5_000, "activity:x")
    assert span.attributes["k"] == "v" and span.status.description == "boom"
    assert span.resource.attributes["service.name"] == "unit"


def test_a_new_orchestration_joins_the_callers_trace_and_follows_its_sampled_flag(exported):
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ref = tracing.active.new_orchestration("o", caller)
    assert (ref.trace_id, ref.parent_id) == (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331)
    assert tracing.active.new_orchestration("o", caller[:-2] + "00") is None  # the caller did not sample
    root = tracing.active.new_orchestration("o", None)
    assert root.parent_id is None and root.trace_id != ref.trace_id
    tracing.active.sampler = ParentBased(TraceIdRatioBased(0.0))
    assert tracing.active.new_orchestration("o", None) is None  # OTEL_TRACES_SAMPLER_ARG=0


def test_json_logs_carry_the_trace_of_the_instance_being_worked_on(exported):
    record = logging.LogRecord("scheduler.engine", logging.INFO, __file__, 1, "episode", None, None)
    formatter = logs.JsonFormatter("r")
    assert "trace_id" not in json.loads(formatter.format(record))
    ref = SpanRef(0xAB, 0xCD)
    with tracing.logged(ref):
        entry = json.loads(formatter.format(record))
    assert (entry["trace_id"], entry["span_id"]) == (f"{0xAB:032x}", f"{0xCD:016x}")
    assert "trace_id" not in json.loads(formatter.format(record))


def test_the_last_flush_does_not_hold_up_the_exit_when_the_collector_is_away(monkeypatch):
    stuck = threading.Event()

    class Unreachable:  # a span processor whose export never returns
        def shutdown(self):
            stuck.wait()

    monkeypatch.setattr(tracing, "SHUTDOWN_SECONDS", 0.05)
    tracing.active = tracing.Tracing(Unreachable(), Resource.create(), ALWAYS_ON)
    tracing.shutdown()  # returns although the flush is still stuck
    assert tracing.active is None
    stuck.set()
