"""Logging: plain text or one JSON object per line, with the replica, the process (with --processes N > 1:
0 the supervisor, 1..N the server processes), and the task hub and instance of the request being served
(set by the gRPC surface for the task that serves it); with tracing on, the trace and span ids of the
instance's orchestration span while the engine works on it (see tracing.py)."""
from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

hub: contextvars.ContextVar[str | None] = contextvars.ContextVar("hub", default=None)
instance: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)
# (trace id, span id) in hex, of the orchestration span of the instance being worked on (tracing on)
trace: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("trace", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
READY = "READY"  # the line that says a replica serves: "READY host:port" (stdout)
# gRPC's C core writes its own lines to stderr (e.g. "I1208 01:53:25.865 ... Handshake failed ..."), which
# would break a stream of JSON objects: with --log-format json they are off unless the operator set
# GRPC_VERBOSITY (e.g. to DEBUG, knowingly). Read by grpc when it is first imported.
NATIVE_LOGS_OFF = {"GRPC_VERBOSITY": "NONE"}

_json: JsonFormatter | None = None  # the formatter of configure(..., "json"), for the READY line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, replica, process (when there are
    several), and hub and instance when the record was logged while serving a request (or passed them
    with ``extra=``)."""

    def __init__(self, replica: str, process: int | None = None) -> None:
        super().__init__()
        self.replica = replica
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "replica": self.replica,
        }
        if self.process is not None:
            entry["process"] = self.process
        for field, var in (("hub", hub), ("instance", instance)):
            value = getattr(record, field, None) or var.get()
            if value is not None:
                entry[field] = value
        ids = getattr(record, "trace", None) or trace.get()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str, replica: str, process: int | None = None) -> None:
    """Log to stderr at ``level`` as ``fmt`` ("text" or "json"); ``process``: which of several processes
    this one is (None: the only one). With "json", every line the process writes is a JSON object: gRPC's
    native logs are off (call this before grpc is imported), Python warnings and an uncaught exception
    are logged, and the READY line (:func:`ready`) is a JSON object too."""
    global _json
    handler = logging.StreamHandler(sys.stderr)
    text = TEXT_FORMAT if process is None else TEXT_FORMAT.replace("%(name)s", f"[process {process}] %(name)s")
    _json = JsonFormatter(replica, process) if fmt == "json" else None
    handler.setFormatter(_json or logging.Formatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    if _json is not None:
        for name, value in NATIVE_LOGS_OFF.items():
            os.environ.setdefault(name, value)  # inherited by the processes of --processes N too
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught


def _log_uncaught(kind, value, traceback) -> None:
    logging.getLogger("scheduler").critical("uncaught exception: %s", value, exc_info=(kind, value, traceback))


def ready(address: str, dapr: str | None = None) -> None:
    """Say on stdout that the replica serves on ``address`` (and Dapr's SDKs on ``dapr``): ``READY host:port
    [dapr host:port]``, or with JSON logs one JSON object whose ``message`` is that line and whose
    ``address`` (and ``dapr_address``) are the addresses (:func:`ready_addresses` reads either)."""
    line = f"{READY} {address}" + ("" if dapr is None else f" dapr {dapr}")
    if _json is not None:
        record = logging.LogRecord("scheduler", logging.INFO, __file__, 0, line, None, None)
        entry = json.loads(_json.format(record))
        entry["address"] = address
        if dapr is not None:
            entry["dapr_address"] = dapr
        line = json.dumps(entry, ensure_ascii=False)
    print(line, flush=True)


def ready_addresses(line: str) -> tuple[str, str | None] | None:
    """(address, Dapr address or None) of a READY line (text or JSON), None for any other line."""
    if line.startswith(READY + " "):
        words = line.split()
        return words[1], words[3] if len(words) > 3 and words[2] == "dapr" else None
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        if isinstance(entry, dict) and str(entry.get("message", "")).startswith(READY + " "):
            return entry.get("address"), entry.get("dapr_address")
    return None


def ready_address(line: str) -> str | None:
    """The address of a READY line (text or JSON), None for any other line."""
    addresses = ready_addresses(line)
    return None if addresses is None else addresses[0]


def fatal(message: str) -> None:
    """The one line that says why the process cannot go on (exit code 2 follows): ``dt-scheduler: <message>``
    on stderr, or an ERROR record with JSON logs."""
    if _json is not None:
        logging.getLogger("scheduler").error("%s", message)
    else:
        print(f"dt-scheduler: {message}", file=sys.stderr)
