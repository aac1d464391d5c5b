"""Service configuration: one typed object, read once from flags and the environment.

Every other module receives a :class:`Config`; nothing else reads ``os.environ``.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlparse

from . import tracing
from .redis_options import check_sentinels, first_line, redacted, sentinel_addresses  # noqa: F401 (re-exported)

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
MAX_PROCESSES = 64  # --processes: far more than the cores of any pod

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
    # -- Redis under Sentinel, replication, dataset identity (see README "Redis and durability") --
    redis_sentinels: str | None = None  # HOST:PORT[,HOST:PORT...]: find the primary through these Sentinels
    redis_sentinel_master: str | None = None  # the name the Sentinels monitor the primary under
    redis_sentinel_username: str | None = None  # ACL user of the Sentinels (their own, not the data's)
    redis_sentinel_password: str | None = None  # password of the Sentinels (DT_REDIS_SENTINEL_PASSWORD)
    redis_sentinel_password_file: str | None = None  # ... or read from this file (a mounted Secret)
    redis_min_replica_acks: int = 0  # every acknowledged write waits for this many replicas (WAIT)
    redis_replica_ack_timeout_ms: int = 1000  # how long WAIT waits for them
    task_hub: str = "default"
    partitions: int = 16
    key_prefix: str = "dt"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the largest message sent or accepted
    max_payload_bytes: int | None = None  # one payload or request; default: max_message_bytes - 64 KiB
    log_level: str = "INFO"
    promote_batch: int = 1000  # entries moved per promote call (bounded scripts)
    metrics_port: int | None = None
    dashboard_port: int | None = None  # serve the web dashboard (HTTP, or HTTPS with the TLS flags) on this port
    dapr_port: int | None = None  # also serve Dapr's fork of the contract on this port (Dapr's SDKs)
    lease_seconds: float = 30.0  # a claimed work item returns to the queue if not renewed for this long
    health_ping_seconds: float = 15.0  # well inside the SDKs' silent-stream timeout (120 s in Python)
    max_history_events: int = 10000  # an orchestration whose history would grow past this fails
    max_inbox_events: int = 10000  # pending events of one instance; RaiseEvent past it is refused
    max_stream_work_items: int = 1000  # work items one stream holds at once (per kind), whatever its worker declares
    stream_write_timeout_seconds: float = 30.0  # a stream whose worker takes nothing off the wire this long ends
    max_work_item_seconds: float = 86400.0  # the longest a work item stays leased to one worker
    redis_max_connections: int = 32  # connections to Redis of one replica (requests wait for a free one)
    retention_seconds: float = 0.0  # finished instances older than this are purged; 0: kept until purged
    tls_cert_file: str | None = None  # serve TLS with this certificate chain (PEM; re-read when it changes)
    tls_key_file: str | None = None  # ... and this private key
    tls_client_ca_file: str | None = None  # require client certificates signed by these CAs (mutual TLS)
    auth_tokens_file: str | None = None  # bearer tokens (JSON, SHA-256 hashes) -> role and task hubs
    allow_unauthenticated: bool = False  # listen beyond loopback without authentication
    # Workload identity: JWTs (Kubernetes projected ServiceAccount tokens) verified against a JWKS file.
    auth_jwks_file: str | None = None  # the issuer's public keys (JWKS JSON; re-read when it changes)
    auth_jwt_audience: str | None = None  # the audience the tokens must name (required with the JWKS file)
    auth_jwt_issuer: str | None = None  # the issuer the tokens must name (required with the JWKS file)
    shutdown_grace_seconds: float = 25.0  # on SIGTERM, how long handed-out work may take to finish
    log_format: str = "text"  # text or json
    # -- task hubs (sec-hubs) --
    max_task_hubs: int = 1000  # task hubs this Redis may hold; one more (CreateTaskHub or first use) is refused
    replica: str = ""  # this replica's name in logs and metrics; default: the host name
    processes: int = 1  # server processes on one port (SO_REUSEPORT), each a full replica
    process: int = 0  # not a flag: which of --processes this one is (1..N), 0 in the supervisor or the only process

    # -- concurrent calls per client connection --
    # Streams (calls) one HTTP/2 connection may have open at once, for every service (health Watch,
    # reflection too); a client's calls past it wait in the client until one ends, they do not fail.
    max_streams_per_connection: int = 100

    # -- tracing: OpenTelemetry's standard variables, not flags (see tracing.py) --
    traces_exporter: str | None = None  # OTEL_TRACES_EXPORTER: otlp, console, none (or a comma list); unset: off
    traces_protocol: str | None = None  # OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or _PROTOCOL: grpc (default), http/protobuf

    def __post_init__(self) -> None:
        if self.max_payload_bytes is None:
            object.__setattr__(self, "max_payload_bytes", self.max_message_bytes - MESSAGE_HEADROOM_BYTES)
        if not NAME_RE.match(self.task_hub):
            raise ValueError(f"{_flag('task_hub')}: task hub name {self.task_hub!r} must match {NAME_RE.pattern}")
        if not NAME_RE.match(self.key_prefix):
            raise ValueError(f"{_flag('key_prefix')}: key prefix {self.key_prefix!r} must match {NAME_RE.pattern}")
        if not 1 <= self.partitions <= 1024:
            raise ValueError(f"{_flag('partitions')} must be between 1 and 1024, got {self.partitions}")
        for name in ("port", "metrics_port", "dashboard_port", "dapr_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{_flag(name)} must be between 0 and 65535, got {value}")
        if self.dapr_port == 0 and self.processes > 1:
            raise ValueError(f"{_flag('dapr_port')} 0 picks a port per process: with {_flag('processes')} over 1, "
                             "name the port")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"{_flag('log_level')} {self.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
        if not 0.1 <= self.lease_seconds <= 3600:
            raise ValueError(f"{_flag('lease_seconds')} must be between 0.1 and 3600, got {self.lease_seconds}")
        if not 0.05 <= self.health_ping_seconds <= 60:
            raise ValueError(f"{_flag('health_ping_seconds')} must be between 0.05 and 60, got {self.health_ping_seconds}")
        if self.max_history_events < 10:
            raise ValueError(f"{_flag('max_history_events')} must be at least 10, got {self.max_history_events}")
        if self.promote_batch < 1:
            raise ValueError(f"promote batch must be at least 1, got {self.promote_batch}")
        if not 256 * 1024 <= self.max_message_bytes <= 1024 ** 3:
            raise ValueError(f"{_flag('max_message_bytes')} must be between 256 KiB and 1 GiB, got {self.max_message_bytes}")
        if not 1 <= self.max_payload_bytes <= self.max_message_bytes - MESSAGE_HEADROOM_BYTES:
            raise ValueError(f"{_flag('max_payload_bytes')} must be between 1 and the max message size minus 64 KiB "
                             f"({self.max_message_bytes - MESSAGE_HEADROOM_BYTES}), got {self.max_payload_bytes}")
        for name in ("max_inbox_events", "max_stream_work_items", "redis_max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_task_hubs < 1:
            raise ValueError(f"{_flag('max_task_hubs')} must be at least 1, got {self.max_task_hubs}")
        for name in ("stream_write_timeout_seconds", "max_work_item_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.retention_seconds < 0:
            raise ValueError(f"{_flag('retention_seconds')} must not be negative (0: off), got {self.retention_seconds}")
        self._check_sentinels()
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        if self.redis_min_replica_acks < 0:
            raise ValueError(f"{_flag('redis_min_replica_acks')} must not be negative, got "
                             f"{self.redis_min_replica_acks}")
        if self.redis_min_replica_acks and self.redis_url is None:
            raise ValueError(f"{_flag('redis_min_replica_acks')} needs a Redis ({_flag('redis_url')} or "
                             f"{_flag('redis_sentinels')}): the embedded store has no replicas")
        if not 1 <= self.redis_replica_ack_timeout_ms <= 60000:
            raise ValueError(f"{_flag('redis_replica_ack_timeout_ms')} must be between 1 and 60000, got "
                             f"{self.redis_replica_ack_timeout_ms}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"{_flag('tls_cert_file')} and {_flag('tls_key_file')} go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(f"{_flag('tls_client_ca_file')} (mutual TLS) needs {_flag('tls_cert_file')} and "
                             f"{_flag('tls_key_file')}")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file", "auth_jwks_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{_flag(name)}: no such file {path!r}")
        self._check_jwt()
        tracing.check_settings(self.traces_exporter, self.traces_protocol)
        if self.shutdown_grace_seconds < 0:
            raise ValueError(f"{_flag('shutdown_grace_seconds')} must not be negative, got {self.shutdown_grace_seconds}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"{_flag('log_format')} must be text or json, got {self.log_format!r}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"{_flag('processes')} must be between 1 and {MAX_PROCESSES}, got {self.processes}")
        if self.processes > 1 and self.redis_url is None:
            raise ValueError(f"{_flag('processes')} {self.processes} needs {_flag('redis_url')}: the embedded store "
                             f"lives inside one process, so the processes would share nothing")
        if self.processes > 1 and self.dashboard_port == 0:
            raise ValueError(f"{_flag('dashboard_port')} 0 with {_flag('processes')} {self.processes}: the processes share "
                             f"one dashboard port, name it")
        if not 0 <= self.process <= self.processes:
            raise ValueError(f"process {self.process} is not one of {_flag('processes')} {self.processes}")
        if self.max_streams_per_connection < 2:  # a worker needs its work stream and a completion at once
            raise ValueError(f"{_flag('max_streams_per_connection')} must be at least 2, got "
                             f"{self.max_streams_per_connection}")
        if not self.replica:
            object.__setattr__(self, "replica", os.environ.get("HOSTNAME") or socket.gethostname())
        if self.auth_tokens_file is None and not self.allow_unauthenticated and not _is_loopback(self.host):
            raise ValueError(
                f"{_flag('host')} {self.host} listens beyond this machine, and no {_flag('auth_tokens_file')} is "
                f"given: anyone who reaches the port could run and delete everything. Give the tokens file, or "
                f"{_flag('allow_unauthenticated')} to accept that (a network policy, a mesh, a trusted network)")
        if self.redis_url is None and not _is_loopback(self.host):
            raise ValueError(
                f"{_flag('host')} {self.host} listens beyond this machine on the embedded in-process store (no "
                f"{_flag('redis_url')}): each replica would keep its own world and lose it on restart. Give "
                f"{_flag('redis_url')} or {_flag('redis_sentinels')}")

    def _check_sentinels(self) -> None:
        check_sentinels(self, _flag)

    @property
    def sentinel_password(self) -> str | None:
        """The Sentinels' password, from the variable or the file (its first line)."""
        return first_line(self.redis_sentinel_password_file) or self.redis_sentinel_password

    def _check_jwt(self) -> None:
        jwt_flags = ("auth_jwt_audience", "auth_jwt_issuer")
        if self.auth_jwks_file is None:
            given = [_flag(name) for name in jwt_flags if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} only apply with {_flag('auth_jwks_file')}")
            return
        for name in jwt_flags:
            if not getattr(self, name):
                raise ValueError(f"{_flag('auth_jwks_file')} needs {_flag(name)}: without it, a token the cluster "
                                 f"issued for any other purpose would be accepted")
        if self.auth_tokens_file is None:
            raise ValueError(f"{_flag('auth_jwks_file')} needs {_flag('auth_tokens_file')}: its \"subjects\" "
                             f"section says which roles and task hubs each token subject has")

    @property
    def authenticates(self) -> bool:
        return self.auth_tokens_file is not None

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
     "redis:// or rediss:// URL; unset runs the embedded in-process store (nothing survives a restart). With "
     "--redis-sentinels it gives only the database, credentials and TLS options: its host and port are not used"),
    ("--redis-sentinels", "DT_REDIS_SENTINELS", str,
     "HOST:PORT[,HOST:PORT...] of Redis Sentinels: every connection finds the primary through them and follows "
     "a failover (with --redis-sentinel-master; not with --redis-cluster)"),
    ("--redis-sentinel-master", "DT_REDIS_SENTINEL_MASTER", str, "the name the Sentinels monitor the primary under"),
    ("--redis-sentinel-username", "DT_REDIS_SENTINEL_USERNAME", str, "ACL user name on the Sentinels"),
    ("--redis-sentinel-password", "DT_REDIS_SENTINEL_PASSWORD", str,
     "password of the Sentinels (prefer the variable or the file to a flag)"),
    ("--redis-sentinel-password-file", "DT_REDIS_SENTINEL_PASSWORD_FILE", str,
     "file holding the Sentinels' password (e.g. a mounted Secret)"),
    ("--redis-min-replica-acks", "DT_REDIS_MIN_REPLICA_ACKS", int,
     "every write a caller is answered for waits (Redis WAIT) until this many replicas have it; fewer in time: "
     "UNAVAILABLE, saying the write may have been applied (0: off)"),
    ("--redis-replica-ack-timeout-ms", "DT_REDIS_REPLICA_ACK_TIMEOUT_MS", int,
     "how long a write waits for --redis-min-replica-acks replicas"),
    ("--task-hub", "DT_TASK_HUB", str, "default task hub (clients may name one with the 'taskhub' metadata key)"),
    ("--partitions", "DT_PARTITIONS", int, "partitions of a task hub created by this replica"),
    ("--key-prefix", "DT_KEY_PREFIX", str, "prefix of every Redis key"),
    ("--max-message-bytes", "DT_MAX_MESSAGE_BYTES", int,
     "largest message sent or accepted (work items, replies; the SDKs accept 4 MiB by default)"),
    ("--max-payload-bytes", "DT_MAX_PAYLOAD_BYTES", int,
     "largest accepted payload (input, event data, output, ...); unset: the max message size minus 64 KiB"),
    ("--log-level", "DT_LOG_LEVEL", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--metrics-port", "DT_METRICS_PORT", int, "serve Prometheus metrics on this port"),
    ("--dashboard-port", "DT_DASHBOARD_PORT", int,
     "serve the web dashboard on this port (same host, TLS and tokens as the gRPC port)"),
    ("--dapr-port", "DT_DAPR_PORT", int,
     "also serve Dapr Workflow's SDKs (Dapr's fork of the contract) on this port (0 picks a free one)"),
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
    ("--tls-cert-file", "DT_TLS_CERT_FILE", str, "serve TLS with this certificate chain (PEM, re-read when it changes)"),
    ("--tls-key-file", "DT_TLS_KEY_FILE", str, "the private key of --tls-cert-file (PEM)"),
    ("--tls-client-ca-file", "DT_TLS_CLIENT_CA_FILE", str,
     "require client certificates signed by these CAs (mutual TLS; PEM)"),
    ("--auth-tokens-file", "DT_AUTH_TOKENS_FILE", str,
     "bearer tokens (JSON: SHA-256 hashes, each with a role and task hubs; re-read when it changes)"),
    # Workload identity (JWTs).
    ("--auth-jwks-file", "DT_AUTH_JWKS_FILE", str,
     "verify JWT bearer tokens (e.g. projected ServiceAccount tokens) against these public keys (JWKS JSON, "
     "e.g. from kubectl get --raw /openid/v1/jwks; re-read when it changes); subjects map to roles in the "
     "tokens file"),
    ("--auth-jwt-audience", "DT_AUTH_JWT_AUDIENCE", str, "the audience (aud) JWTs must name (with --auth-jwks-file)"),
    ("--auth-jwt-issuer", "DT_AUTH_JWT_ISSUER", str,
     "the issuer (iss) JWTs must name, e.g. https://kubernetes.default.svc.cluster.local (with --auth-jwks-file)"),
    ("--shutdown-grace-seconds", "DT_SHUTDOWN_GRACE_SECONDS", float,
     "on SIGTERM: how long work already handed out may take to finish (match terminationGracePeriodSeconds)"),
    ("--log-format", "DT_LOG_FORMAT", str, "text or json (one object per line, with replica, hub and instance)"),
    ("--replica", "DT_REPLICA", str, "this replica's name in logs and metrics (default: the host name)"),
    ("--processes", "DT_PROCESSES", int,
     "server processes on one port (SO_REUSEPORT), each a full replica; at most one per core the pod may use"),
    # -- task hubs (sec-hubs) --
    ("--max-task-hubs", "DT_MAX_TASK_HUBS", int,
     "task hubs this Redis may hold (CreateTaskHub, or first use without tokens, past it: RESOURCE_EXHAUSTED)"),
]
# Concurrent calls per client connection.
_OPTIONS += [
    ("--max-streams-per-connection", "DT_MAX_STREAMS_PER_CONNECTION", int,
     "calls one client connection may have open at once, for every service (health and reflection too); "
     "a client's calls past it wait in the client until one ends"),
]
_SWITCHES = [  # (flag, environment variable, help): on when given, or when the variable is 1, true or yes
    ("--redis-cluster", "DT_REDIS_CLUSTER", "the Redis URL names a node of a Redis Cluster"),
    ("--allow-unauthenticated", "DT_ALLOW_UNAUTHENTICATED",
     "listen beyond loopback without --auth-tokens-file (anyone who reaches the port may do anything)"),
]
_ENV = {_flag_name: env for _flag_name, env, *_ in _OPTIONS + _SWITCHES}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _field(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _flag(field: str) -> str:
    """A Config field as the user names it: its flag and its environment variable."""
    flag = "--" + field.replace("_", "-")
    env = _ENV.get(flag)
    return f"{flag} ({env})" if env else flag


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_SSL_PARAMS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}


def check_redis_url(url: str) -> None:
    """ValueError naming --redis-url unless the URL is one the service can use (files must exist)."""
    what = _flag("redis_url")
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"{what}: the scheme must be redis:// or rediss:// (TLS), got {parsed.scheme + '://' if parsed.scheme else 'none'}")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"{what}: the port is not a number") from None
    if not parsed.hostname:
        raise ValueError(f"{what}: no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{what}: port {port} is out of range")
    db = parsed.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{what}: the database (the path) must be a number, got {db!r}")
    for name, value in parse_qsl(parsed.query):
        if name == "db" and not value.isdigit():  # the database as an option (it wins over the path)
            raise ValueError(f"{what}: the database (db=) must be a number, got {value!r}")
        if name not in _SSL_PARAMS:
            continue
        if name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") and not os.path.isfile(value):
            raise ValueError(f"{what}: {name}: no such file {value!r}")
        if name == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
            raise ValueError(f"{what}: ssl_cert_reqs must be none, optional or required, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option; each flag falls back to its environment variable, then to its default."""
    for flag, env, typ, help_text in _OPTIONS:
        parser.add_argument(flag, type=typ, default=None,
                            help=f"{help_text} (env {env}, default {_DEFAULTS[_field(flag)]})")
    for flag, env, help_text in _SWITCHES:
        parser.add_argument(flag, action="store_true", default=None, help=f"{help_text} (env {env}=1)")


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """The Config of parsed flags and the environment; ValueError naming the flag or variable that is wrong."""
    environ = os.environ if environ is None else environ
    values = {}
    for flag, env, typ, _ in _OPTIONS:
        name = _field(flag)
        value = getattr(args, name, None)
        if value is None and environ.get(env):
            try:
                value = typ(environ[env])
            except ValueError:
                raise ValueError(f"{env}: {environ[env]!r} is not a valid {typ.__name__} (for {flag})") from None
        values[name] = _DEFAULTS[name] if value is None else value
    for flag, env, _ in _SWITCHES:
        name = _field(flag)
        values[name] = bool(getattr(args, name, None)) or environ.get(env, "").lower() in ("1", "true", "yes")
    values["log_level"] = str(values["log_level"]).upper()
    if environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
        values["traces_exporter"] = environ.get("OTEL_TRACES_EXPORTER") or None
    values["traces_protocol"] = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                                 or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or None)
    return Config(**values)
