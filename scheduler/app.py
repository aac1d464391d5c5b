"""Composition root: builds the parts of one replica and starts/stops them in order."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

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
from .api.servicer import Servicer, add_to_server
from .api.tls import ServerCertificates
from .config import Config, _is_loopback
from .engine import Engine
from .engine.hubs import SAFETY_SWEEP_SECONDS
from .protocol import STATUS_PREFIX
from .store import Store
from .store.connection import connect, connect_fast

log = logging.getLogger(__name__)

STATUS_NAMES = [name.removeprefix(STATUS_PREFIX) for name in pb.OrchestrationStatus.keys()]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"].full_name
# Health service names for Kubernetes' gRPC probes. Readiness: Redis answers through the connections
# requests use, and the replica is not shutting down ("" and the service's own name say the same).
# Liveness: the process and its event loop answer (a Redis outage must not restart every pod).
READINESS, LIVENESS = "readiness", "liveness"
HUB_REFRESH_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 1.0
DEPTH_SAMPLE_SECONDS = 5.0  # only with --metrics-port
SAFETY_LOOK_SECONDS = 10.0  # behind the wake-ups: streams of a hub with queued work look there
RETENTION_SECONDS = 5.0
TOKENS_FILE_CHECK_SECONDS = 0.5  # a change of the tokens file bites within this (revoked streams end)

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
HELD = prometheus_client.Gauge("dt_work_items_held", "Work items this replica's streams handed out, not yet reported",
                               multiprocess_mode=PER_PROCESS)


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
        self.tokens = _tokens_file(config)  # first: a bad tokens file stops the start before anything is built
        self.redis = redis if redis is not None else connect(config.redis_url, config.redis_cluster,
                                                             config.redis_max_connections)
        fast = connect_fast(config.redis_url, config.redis_cluster) if redis is None else None
        self.store = Store(self.redis, config.key_prefix, config.partitions, fast=fast, limits=config.limits,
                           max_hubs=config.max_task_hubs)
        self.engine = Engine.build(self.store, config)
        self.health = health.aio.HealthServicer()
        self.housekeeping = AsyncIOScheduler()
        self._running_jobs: set[asyncio.Task] = set()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
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
        self.interceptor = CallInterceptor(Authenticator(self.tokens, verifier), config.task_hub,
                                           count=config.metrics_port is not None,
                                           log_context=config.log_format == "json")

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
            await self.engine.hubs.get(self.config.task_hub)
        except errors.StoreError as exc:
            log.warning("Redis is not reachable yet (%s); serving UNAVAILABLE until it is", exc)
        self.server = grpc.aio.server(options=[
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
        self.servicer = Servicer(self.engine, self.config)
        add_to_server(self.servicer, self.server, self.interceptor.wrap)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server)
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.config.tls_cert_file:
                certificates = ServerCertificates(self.config.tls_cert_file, self.config.tls_key_file,
                                                  self.config.tls_client_ca_file)
                self.port = self.server.add_secure_port(address, certificates.credentials())
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"--port (DT_PORT): cannot listen on {address}: {exc}") from None
        if self.config.metrics_port is not None and not shared:
            try:
                prometheus_client.start_http_server(self.config.metrics_port, addr=self.config.host)
            except OSError as exc:
                raise StartupError(f"--metrics-port (DT_METRICS_PORT): cannot listen on "
                                   f"{self.config.host}:{self.config.metrics_port}: {exc.strerror}") from None
        await self.server.start()
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
        if self.server is not None:
            await self.server.stop(1.0)
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
        """Re-read the tokens file if it changed: long calls of callers that lost access end at once."""
        self.tokens.refresh()

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
        """Readiness: SERVING while Redis answers through the connections requests use, unless draining."""
        if self.draining:
            return
        try:
            await self.store.ping()
            status = health_pb2.HealthCheckResponse.SERVING
        except errors.StoreError:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_readiness(status)

    async def _set_readiness(self, status) -> None:
        for service in ("", SERVICE_NAME, READINESS):
            await self.health.set(service, status)
