"""Service configuration: one typed object, read once from flags and the environment.

Every other module receives a :class:`Config`; nothing else reads ``os.environ``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass

# gRPC clients refuse messages over 4 MiB by default. A message carries more than its payloads
# (ids, timestamps, status, the framing of each event): payloads keep 64 KiB of headroom below it.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MESSAGE_HEADROOM_BYTES = 64 * 1024  # below the message size: one payload; a work item's events (with framing)
REPLY_HEADROOM_BYTES = 16 * 1024  # below the message size: an instance's state, a page (with the reply's fields)


@dataclass(frozen=True)
class Limits:
    """The bounds of one instance, checked when it grows (the README's limits table)."""

    max_history_events: int = 10000  # an orchestration whose history would grow past this fails
    max_inbox_events: int = 10000  # events waiting for the next episode; more are refused
    max_work_item_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - MESSAGE_HEADROOM_BYTES  # history + pending events
    max_state_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - REPLY_HEADROOM_BYTES  # input + output + custom status + failure

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Task hub names and the key prefix become part of Redis key names and of the
# glob patterns used to delete a hub, so they are restricted to characters that
# are neither glob syntax nor key separators.
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 4001  # where the DurableTask SDKs look by default
    redis_url: str | None = None  # None: the embedded in-process store
    redis_cluster: bool = False
    task_hub: str = "default"
    partitions: int = 16
    key_prefix: str = "dt"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the largest message sent or accepted
    max_payload_bytes: int | None = None  # one payload or request; default: max_message_bytes - 64 KiB
    log_level: str = "INFO"
    promote_batch: int = 1000  # entries moved per promote call (bounded scripts)
    metrics_port: int | None = None
    lease_seconds: float = 30.0  # a claimed work item returns to the queue if not renewed for this long
    health_ping_seconds: float = 15.0  # well inside the SDKs' silent-stream timeout (120 s in Python)
    max_history_events: int = 10000  # an orchestration whose history would grow past this fails
    max_inbox_events: int = 10000  # pending events of one instance; RaiseEvent past it is refused
    max_stream_work_items: int = 1000  # work items one stream holds at once (per kind), whatever its worker declares
    stream_write_timeout_seconds: float = 30.0  # a stream whose worker takes nothing off the wire this long ends
    max_work_item_seconds: float = 86400.0  # the longest a work item stays leased to one worker
    redis_max_connections: int = 32  # connections to Redis of one replica (requests wait for a free one)
    retention_seconds: float = 0.0  # finished instances older than this are purged; 0: kept until purged

    def __post_init__(self) -> None:
        if self.max_payload_bytes is None:
            object.__setattr__(self, "max_payload_bytes", self.max_message_bytes - MESSAGE_HEADROOM_BYTES)
        if not NAME_RE.match(self.task_hub):
            raise ValueError(f"task hub name {self.task_hub!r} must match {NAME_RE.pattern}")
        if not NAME_RE.match(self.key_prefix):
            raise ValueError(f"key prefix {self.key_prefix!r} must match {NAME_RE.pattern}")
        if not 1 <= self.partitions <= 1024:
            raise ValueError(f"partitions must be between 1 and 1024, got {self.partitions}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level {self.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
        if not 0.1 <= self.lease_seconds <= 3600:
            raise ValueError(f"lease must be between 0.1 and 3600 seconds, got {self.lease_seconds}")
        if not 0.05 <= self.health_ping_seconds <= 60:
            raise ValueError(f"health ping interval must be between 0.05 and 60 seconds, got {self.health_ping_seconds}")
        if self.max_history_events < 10:
            raise ValueError(f"history limit must be at least 10 events, got {self.max_history_events}")
        if self.promote_batch < 1:
            raise ValueError(f"promote batch must be at least 1, got {self.promote_batch}")
        if not 256 * 1024 <= self.max_message_bytes <= 1024 ** 3:
            raise ValueError(f"max message size must be between 256 KiB and 1 GiB, got {self.max_message_bytes}")
        if not 1 <= self.max_payload_bytes <= self.max_message_bytes - MESSAGE_HEADROOM_BYTES:
            raise ValueError(f"max payload size must be between 1 and the max message size minus 64 KiB "
                             f"({self.max_message_bytes - MESSAGE_HEADROOM_BYTES}), got {self.max_payload_bytes}")
        for name in ("max_inbox_events", "max_stream_work_items", "redis_max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("stream_write_timeout_seconds", "max_work_item_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.retention_seconds < 0:
            raise ValueError(f"retention must not be negative (0: off), got {self.retention_seconds}")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_history_events, self.max_inbox_events,
                      self.max_message_bytes - MESSAGE_HEADROOM_BYTES, self.reply_bytes)

    @property
    def reply_bytes(self) -> int:
        """What the payloads of one reply (an instance's state, a page, a history chunk) may add up to."""
        return self.max_message_bytes - REPLY_HEADROOM_BYTES


# (flag, environment variable, type, help); each default is the Config field's.
_OPTIONS = [
    ("--host", "DT_HOST", str, "address to listen on"),
    ("--port", "DT_PORT", int, "gRPC port (0 picks a free one)"),
    ("--redis-url", "DT_REDIS_URL", str,
     "redis:// or rediss:// URL; unset runs the embedded in-process store (nothing survives a restart)"),
    ("--task-hub", "DT_TASK_HUB", str, "default task hub (clients may name one with the 'taskhub' metadata key)"),
    ("--partitions", "DT_PARTITIONS", int, "partitions of a task hub created by this replica"),
    ("--key-prefix", "DT_KEY_PREFIX", str, "prefix of every Redis key"),
    ("--max-message-bytes", "DT_MAX_MESSAGE_BYTES", int,
     "largest message sent or accepted (work items, replies; the SDKs accept 4 MiB by default)"),
    ("--max-payload-bytes", "DT_MAX_PAYLOAD_BYTES", int,
     "largest accepted payload (input, event data, output, ...); unset: the max message size minus 64 KiB"),
    ("--log-level", "DT_LOG_LEVEL", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--metrics-port", "DT_METRICS_PORT", int, "serve Prometheus metrics on this port"),
    ("--lease-seconds", "DT_LEASE_SECONDS", float, "lease of a work item handed to a worker"),
    ("--health-ping-seconds", "DT_HEALTH_PING_SECONDS", float, "HealthPing interval on idle work streams"),
    ("--max-history-events", "DT_MAX_HISTORY_EVENTS", int, "history events an orchestration may have"),
    ("--max-inbox-events", "DT_MAX_INBOX_EVENTS", int, "events waiting for an instance's next episode"),
    ("--max-stream-work-items", "DT_MAX_STREAM_WORK_ITEMS", int,
     "work items of each kind one work stream holds at once (at most what its worker declares)"),
    ("--stream-write-timeout-seconds", "DT_STREAM_WRITE_TIMEOUT_SECONDS", float,
     "a work stream whose worker takes nothing off the wire this long is closed and its work handed back"),
    ("--max-work-item-seconds", "DT_MAX_WORK_ITEM_SECONDS", float,
     "the longest a work item stays leased to one worker; then it goes back to the queue"),
    ("--redis-max-connections", "DT_REDIS_MAX_CONNECTIONS", int, "Redis connections of this replica"),
    ("--retention-seconds", "DT_RETENTION_SECONDS", float,
     "purge finished instances this long after they ended (0: keep them until a client purges)"),
]
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _field(flag: str) -> str:
    return flag[2:].replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option; each flag falls back to its environment variable, then to its default."""
    for flag, env, typ, help_text in _OPTIONS:
        parser.add_argument(flag, type=typ, default=None,
                            help=f"{help_text} (env {env}, default {_DEFAULTS[_field(flag)]})")
    parser.add_argument("--redis-cluster", action="store_true", default=None,
                        help="connect to a Redis Cluster (env DT_REDIS_CLUSTER=1)")


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    values = {}
    for flag, env, typ, _ in _OPTIONS:
        name = _field(flag)
        value = getattr(args, name, None)
        if value is None and environ.get(env):
            value = typ(environ[env])
        values[name] = _DEFAULTS[name] if value is None else value
    cluster = args.redis_cluster if getattr(args, "redis_cluster", None) else environ.get("DT_REDIS_CLUSTER", "") in ("1", "true", "yes")
    values["log_level"] = str(values["log_level"]).upper()
    return Config(redis_cluster=bool(cluster), **values)
