"""Composition root: builds the parts of one replica and starts/stops them in order."""
from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import TYPE_CHECKING

import grpc
import prometheus_client
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import errors, ports, tracing
from ._proto import orchestrator_service_pb2 as pb
from .api.auth import Authenticator
from .api.tokens import TokenFile, TokensFileError
from .api.jwt_auth import JwksFile, JwtVerifier
from .api.interceptors import CallInterceptor
from .api.dapr import servicer as dapr
from .api.servicer import Servicer, add_to_server
from .api.tls import ServerCertificates
from .config import Config, _is_loopback
from .engine import Engine
from .engine.hubs import SAFETY_SWEEP_SECONDS
from .protocol import STATUS_PREFIX
from .store import Store
from .store.connection import Sentinels, connect, connect_fast

if TYPE_CHECKING:
    from .api.dashboard import Dashboard

log = logging.getLogger(__name__)

STATUS_NAMES = [name.removeprefix(STATUS_PREFIX) for name in pb.OrchestrationStatus.keys()]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"].full_name
# Health service names for Kubernetes' gRPC probes. Readiness: Redis answers through the connections
# requests use, and the replica is not shutting down ("" and the service's own name say the same).
# Liveness: the process and its event loop answer (a Redis outage must not restart every pod).
READINESS, LIVENESS = "readiness", "liveness"
HUB_REFRESH_SECONDS = 2.0
REPLICATED_CONNECTIONS = 4  # pipelined request connections with --redis-min-replica-acks (else 1)
HEALTH_CHECK_SECONDS = 1.0
DEPTH_SAMPLE_SECONDS = 5.0  # only with --metrics-port
SAFETY_LOOK_SECONDS = 10.0  # behind the wake-ups: streams of a hub with queued work look there
RETENTION_SECONDS = 5.0
TOKENS_FILE_CHECK_SECONDS = 0.5  # a change of the tokens file bites within this (revoked streams end)
CERTIFICATE_CHECK_SECONDS = 1.0  # the dashboard's certificate files (with --dashboard-port and TLS)

# With --processes N, the supervisor serves the metrics of every process merged (prometheus_client's
# multiprocess mode): a hub's depths are the same Redis figures read by each process, so the latest
# reading stands; the streams and held items of the processes add up to the replica's.
HUB_SAMPLE, PER_PROCESS = "livemostrecent", "livesum"
DUE_DEPTH = prometheus_client.Gauge("dt_due_entries", "Entries waiting in the due sets", ["hub"],
                                    multiprocess_mode=HUB_SAMPLE)
READY_DEPTH = prometheus_client.Gauge("dt_ready_entries", "Instances waiting in the ready sets", ["hub"],
                                      multiprocess_mode=HUB_SAMPLE)
READY_AGE = prometheus_client.Gauge("dt_ready_oldest_age_seconds", "Age of the oldest ready entry", ["hub"],
                                    multiprocess_mode=HUB_SAMPLE)
OUTBOX_DEPTH = prometheus_client.Gauge("dt_outbox_messages", "Messages between instances not yet delivered", ["hub"],
                                       multiprocess_mode=HUB_SAMPLE)
INSTANCES = prometheus_client.Gauge("dt_instances", "Instances by status", ["hub", "status"],
                                    multiprocess_mode=HUB_SAMPLE)
STREAMS = prometheus_client.Gauge("dt_work_streams", "Work streams (connected workers) of this replica",
                                  multiprocess_mode=PER_PROCESS)
DATASET_LOST = prometheus_client.Gauge("dt_redis_dataset_lost", "1 while this replica finds the dataset identity in "
                                       "Redis missing or changed (writes refused until adopted), else 0",
                                       multiprocess_mode="livemax")
HELD = prometheus_client.Gauge("dt_work_items_held", "Work items this replica's streams handed out, not yet reported",
                               multiprocess_mode=PER_PROCESS)
BUILD_INFO = prometheus_client.Gauge("dt_build_info", "Always 1: the version of the service, the source revision it "
                                     "was built from (DT_BUILD_REVISION, baked into the image) and the Python it runs on",
                                     ["version", "revision", "python"], multiprocess_mode="livemax")


def build_info() -> dict[str, str]:
    """The labels of ``dt_build_info``: the installed distribution's version, the revision the image was
    built from (``DT_BUILD_REVISION``; "unknown" outside an image built with it) and the Python version."""
    try:
        version = metadata.version("dt-redis-scheduler")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return {"version": version, "revision": os.environ.get("DT_BUILD_REVISION") or "unknown",
            "python": platform.python_version()}


def lease_sweep_seconds(lease_seconds: float) -> float:
    """How often expired leases are looked for: a sixth of a lease (work of a dead worker or replica waits
    at most that long past its lease in a hub active lately; see engine/hubs.py for idle hubs), between 0.5
    and 5 s."""
    return min(5.0, max(0.5, lease_seconds / 6))


class StartupError(Exception):
    """The replica cannot start (a port in use, ...): one line says why."""


def _tokens_file(config: Config) -> TokenFile | None:
    """The tokens file of ``--auth-tokens-file`` (None without one); StartupError when it cannot be used."""
    if not config.auth_tokens_file:
        return None
    plaintext = None
    if not config.tls_cert_file and not _is_loopback(config.host):
        plaintext = (f"bearer tokens travel in plaintext: --host {config.host} listens beyond loopback without "
                     f"--tls-cert-file (anyone on the path can read and reuse them; serve TLS, or use a mesh)")
    try:
        return TokenFile(config.auth_tokens_file, transport_warning=plaintext)
    except TokensFileError as exc:
        raise StartupError(str(exc)) from None


class App:
    """One replica: the store, the engine (promoters and relays per task hub, dispatcher, wake-ups),
    the gRPC surface and housekeeping."""

    def __init__(self, config: Config, redis=None) -> None:
        self.config = config
        BUILD_INFO.labels(**build_info()).set(1)
        self.tokens = _tokens_file(config)  # first: a bad tokens file stops the start before anything is built
        sentinels = Sentinels.of(config)
        self.redis = redis if redis is not None else connect(config.redis_url, config.redis_cluster,
                                                             config.redis_max_connections, sentinels)
        # With --redis-min-replica-acks a write's WAIT holds its connection for a replica's round trip: a few
        # pipelined connections let those overlap (store/spread.py).
        fast = connect_fast(config.redis_url, config.redis_cluster, sentinels,
                            connections=REPLICATED_CONNECTIONS if config.redis_min_replica_acks else 1) \
            if redis is None else None
        self.store = Store(self.redis, config.key_prefix, config.partitions, fast=fast, limits=config.limits,
                           max_hubs=config.max_task_hubs, replica_acks=config.redis_min_replica_acks,
                           replica_ack_timeout_ms=config.redis_replica_ack_timeout_ms, replica_name=config.replica)
        self.redis_away_since: float | None = None  # monotonic time Redis stopped answering, or None
        self.engine = Engine.build(self.store, config)
        self.health = health.aio.HealthServicer()
        self.housekeeping = AsyncIOScheduler()
        self._running_jobs: set[asyncio.Task] = set()
        self.server: grpc.aio.Server | None = None
        self.dashboard: Dashboard | None = None
        self.certificates: ServerCertificates | None = None
        self.port: int | None = None
        self.dapr_server: grpc.aio.Server | None = None  # with --dapr-port: Dapr's fork of the contract
        self.dapr_port: int | None = None
        self.draining = False
        verifier = None
        if config.auth_jwks_file:
            try:
                verifier = JwtVerifier(JwksFile(config.auth_jwks_file), config.auth_jwt_audience,
                                       config.auth_jwt_issuer)
            except ValueError as exc:
                raise StartupError(str(exc)) from None  # it names the flag and the file
        elif self.tokens is not None and self.tokens.has_subjects:
            log.warning("the tokens file has subjects but no --auth-jwks-file is given: JWTs are not accepted")
        self.jwt = verifier
        self.authenticator = Authenticator(self.tokens, verifier)
        self.interceptor = CallInterceptor(self.authenticator, config.task_hub,
                                           count=config.metrics_port is not None,
                                           log_context=config.log_format == "json")
        self.dapr_interceptor = CallInterceptor(self.authenticator, config.task_hub,
                                                count=config.metrics_port is not None,
                                                log_context=config.log_format == "json", token_hub_name=dapr.visible)

    async def start(self) -> int:
        """Start everything; returns the bound gRPC port. StartupError (with nothing left running) when
        a port is taken.

        One of several processes (``config.process`` > 0) shares its port with the others
        (SO_REUSEPORT) and leaves the port check and the metrics endpoint to the supervisor."""
        shared = self.config.process > 0
        if not shared and (problem := ports.taken(self.config)):
            raise StartupError(problem)
        tracing.configure(self.config.traces_exporter, self.config.traces_protocol)
        try:
            await self.store.load_scripts()
            await self.store.check_dataset()
            await self.engine.hubs.get(self.config.task_hub)
            if self.config.dapr_port is not None:
                await self.engine.hubs.get(dapr.twin(self.config.task_hub))
        except errors.StoreError as exc:
            log.warning("Redis is not reachable yet (%s); serving UNAVAILABLE until it is", exc)
            self.redis_away_since = time.monotonic()
        if self.config.tls_cert_file:
            self.certificates = ServerCertificates(self.config.tls_cert_file, self.config.tls_key_file,
                                                   self.config.tls_client_ca_file)
        self.server = self._grpc_server(shared)
        self.servicer = Servicer(self.engine, self.config)
        add_to_server(self.servicer, self.server, self.interceptor.wrap)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server)
        self.port = self._listen(self.server, self.config.port, "--port (DT_PORT)")
        if self.config.dapr_port is not None:
            # Dapr's SDKs call /TaskHubSidecarService/<method> with messages of their own: a server of its own
            # (the two services share one path), with the same limits, credentials and interceptor steps
            self.dapr_server = self._grpc_server(shared)
            add_to_server(dapr.DaprServicer(self.engine, self.config), self.dapr_server, self.dapr_interceptor.wrap,
                          service=dapr.SERVICE, name=dapr.WIRE_NAME)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.dapr_server)
            self.dapr_port = self._listen(self.dapr_server, self.config.dapr_port, "--dapr-port (DT_DAPR_PORT)")
        if self.config.metrics_port is not None and not shared:
            try:
                prometheus_client.start_http_server(self.config.metrics_port, addr=self.config.host)
            except OSError as exc:
                raise StartupError(f"--metrics-port (DT_METRICS_PORT): cannot listen on "
                                   f"{self.config.host}:{self.config.metrics_port}: {exc.strerror}") from None
        if self.config.dashboard_port is not None:
            from .api.dashboard import Dashboard  # aiohttp is imported only by a replica that serves it
            from .api.dashboard.calls import Calls
            # Dapr instances too (in the twins some replica with --dapr-port made), through the Dapr port's path
            self.dashboard = Dashboard(Calls(self.servicer, self.interceptor), self.engine, self.config,
                                       self.certificates,
                                       dapr=Calls(dapr.DaprHubs(self.engine, self.config), self.dapr_interceptor))
            try:
                await self.dashboard.start()
            except OSError as exc:
                raise StartupError(f"--dashboard-port (DT_DASHBOARD_PORT): cannot listen on "
                                   f"{self.config.host}:{self.config.dashboard_port}: {exc.strerror}") from None
        await self.server.start()
        if self.dapr_server is not None:
            await self.dapr_server.start()
        return await self._start_background()

    def _grpc_server(self, shared: bool) -> grpc.aio.Server:
        return grpc.aio.server(options=[
            ("grpc.so_reuseport", 1 if shared else 0),
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: the calls one connection may hold open, for every service
            # (health Watch streams cost memory and ask no token); a client queues its calls past it.
            ("grpc.max_concurrent_streams", self.config.max_streams_per_connection),
            # grpc's "overload protection" also refuses (REFUSED_STREAM: the caller gets UNAVAILABLE) a new
            # stream while calls that already ended still count until their handler has finished: a client at
            # the bound, such as a worker answering many work items at once, would see calls fail at random
            # instead of waiting (tests/server/test_streams_per_connection.py). Without the bound above it
            # never applied (its threshold was unlimited), so turning it off changes nothing else.
            ("grpc.http.overload_protection", 0),
        ])

    def _listen(self, server: grpc.aio.Server, port: int, flag: str) -> int:
        address = f"{self.config.host}:{port}"
        try:
            if self.certificates is not None:
                return server.add_secure_port(address, self.certificates.credentials())
            return server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"{flag}: cannot listen on {address}: {exc}") from None

    async def _start_background(self) -> int:
        self.engine.wakeups.start()
        await self.engine.hubs.refresh()
        jobs = [(self.engine.hubs.refresh, HUB_REFRESH_SECONDS), (self._check_health, HEALTH_CHECK_SECONDS),
                (self.sweep_leases, lease_sweep_seconds(self.config.lease_seconds)),
                (self.safety_look, SAFETY_LOOK_SECONDS), (self.engine.retention.sweep, RETENTION_SECONDS),
                (self.safety_sweep, SAFETY_SWEEP_SECONDS)]
        if self.config.metrics_port is not None:
            jobs.append((self.sample_depths, DEPTH_SAMPLE_SECONDS))
        if self.tokens is not None:
            jobs.append((self.watch_tokens, TOKENS_FILE_CHECK_SECONDS))
        if self.dashboard is not None and self.certificates is not None:
            jobs.append((self.watch_dashboard_certificates, CERTIFICATE_CHECK_SECONDS))
        for job, seconds in jobs:
            self.add_housekeeping(job, seconds)
        self.housekeeping.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._check_health()
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Shut down gracefully: readiness goes NOT_SERVING at once, work streams hand out nothing more,
        work already handed out may be completed for up to ``grace`` seconds (default
        --shutdown-grace-seconds); then leases go back and streams close, so their workers reconnect to
        another replica; running calls get a last second; background work stops."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        self.draining = True
        await self._set_readiness(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.engine.dispatcher.drain(grace)
        await self.health.enter_graceful_shutdown()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await asyncio.gather(*(server.stop(1.0) for server in (self.server, self.dapr_server) if server is not None))
        if self.housekeeping.running:
            self.housekeeping.pause()  # shutdown() would cancel a running job mid-step: let it finish
            if self._running_jobs:
                await asyncio.wait(self._running_jobs, timeout=5)
            self.housekeeping.shutdown(wait=False)
        await self.engine.hubs.stop()
        await self.engine.wakeups.stop()
        await self.store.aclose()
        await asyncio.to_thread(tracing.shutdown)  # the spans still batched go out

    # -- background ------------------------------------------------------------------------

    def add_housekeeping(self, job: Callable[[], Awaitable[None]], seconds: float) -> None:
        """Run ``job`` every ``seconds`` (never two at once); :meth:`stop` lets a running one finish."""
        async def tracked() -> None:
            task = asyncio.current_task()
            self._running_jobs.add(task)
            try:
                await job()
            finally:
                self._running_jobs.discard(task)

        self.housekeeping.add_job(tracked, "interval", seconds=seconds, max_instances=1, name=job.__name__)

    async def sweep_leases(self) -> None:
        """Re-queue work whose lease expired (a worker or replica died); any replica may run it."""
        seconds = lease_sweep_seconds(self.config.lease_seconds)
        await self.engine.dispatcher.sweep(self.engine.hubs.lease_sweep_slice(seconds))

    async def safety_sweep(self) -> None:
        """Behind the wake-ups: a few partitions in turn are called by their promoter and relay."""
        self.engine.hubs.safety_sweep()

    async def safety_look(self) -> None:
        await self.engine.dispatcher.safety_look(self.engine.hubs.served())

    async def watch_tokens(self) -> None:
        """Re-read the tokens file (and the JWKS file) if it changed: long calls of callers that lost access
        end at once, as do long calls whose JWT has expired."""
        self.tokens.refresh()
        if self.jwt is not None:
            self.jwt.jwks.refresh()
            self.authenticator.expire()

    async def watch_dashboard_certificates(self) -> None:
        """The dashboard's TLS context loads the certificate files again when they change (grpc asks at
        each handshake by itself)."""
        self.dashboard.refresh_certificates()

    async def sample_depths(self) -> None:
        """Queue depths and instance counts of the hubs served here, and this replica's streams, for the
        metrics endpoint."""
        STREAMS.set(len(self.engine.dispatcher.all_streams()))
        HELD.set(self.engine.dispatcher.held())
        for hub in self.engine.hubs.served():
            try:
                stats = await self.store.hub_stats(hub)
            except errors.StoreError:
                return
            DUE_DEPTH.labels(hub.hub).set(stats.due)
            READY_DEPTH.labels(hub.hub).set(stats.ready)
            OUTBOX_DEPTH.labels(hub.hub).set(stats.outbox)
            oldest = stats.oldest_ready_ms
            READY_AGE.labels(hub.hub).set(0 if oldest is None else max(stats.now_ms - oldest, 0) / 1000)
            for status in STATUS_NAMES:
                INSTANCES.labels(hub.hub, status).set(stats.statuses.get(status, 0))

    async def _check_health(self) -> None:
        """Readiness: SERVING while Redis answers through the connections requests use and holds the
        dataset this replica knows, unless draining. Logs one line when Redis stops answering and one when
        it is back."""
        if self.draining:
            return
        try:
            await self.store.ping()
            await self.store.check_dataset()
            reachable = True
        except errors.StoreError as exc:
            reachable = False
            if self.redis_away_since is None:
                self.redis_away_since = time.monotonic()
                log.warning("Redis unreachable (%s): calls get UNAVAILABLE and readiness is NOT_SERVING until it "
                            "answers", exc)
        if reachable and self.redis_away_since is not None:
            log.info("Redis reachable again after %.1f s away", time.monotonic() - self.redis_away_since)
            self.redis_away_since = None
        DATASET_LOST.set(1 if self.store.dataset_lost else 0)
        serving = reachable and not self.store.dataset_lost
        await self._set_readiness(health_pb2.HealthCheckResponse.SERVING if serving
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_readiness(self, status) -> None:
        for service in ("", SERVICE_NAME, READINESS):
            if self.draining and status == health_pb2.HealthCheckResponse.SERVING:
                return  # a health check that began before stop() must not undo its NOT_SERVING
            await self.health.set(service, status)
