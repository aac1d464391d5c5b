"""Logging: plain text or one JSON object per line, with the replica, and the task hub and instance
of the request being served (set by the gRPC surface for the task that serves it)."""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

hub: contextvars.ContextVar[str | None] = contextvars.ContextVar("hub", default=None)
instance: contextvars.ContextVar[str | None] = contextvars.ContextVar("instance", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, replica, and hub and instance when
    the record was logged while serving a request (or passed them with ``extra=``)."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "replica": self.replica,
        }
        for field, var in (("hub", hub), ("instance", instance)):
            value = getattr(record, field, None) or var.get()
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str, replica: str) -> None:
    """Log to stderr at ``level`` as ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(replica) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
