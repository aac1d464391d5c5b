"""Logging: plain text or one JSON object per line, with the replica, the process (with --processes N > 1:
0 the supervisor, 1..N the server processes), and the task hub and instance of the request being served
(set by the gRPC surface for the task that serves it); with tracing on, the trace and span ids of the
instance's orchestration span while the engine works on it (see tracing.py)."""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

hub: contextvars.ContextVar[str | None] = contextvars.ContextVar("hub", default=None)
instance: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)
# (trace id, span id) in hex, of the orchestration span of the instance being worked on (tracing on)
trace: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("trace", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    this one is (None: the only one)."""
    handler = logging.StreamHandler(sys.stderr)
    text = TEXT_FORMAT if process is None else TEXT_FORMAT.replace("%(name)s", f"[process {process}] %(name)s")
    handler.setFormatter(JsonFormatter(replica, process) if fmt == "json" else logging.Formatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
