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

from . import errors
from ._proto import orchestrator_service_pb2 as pb
from .api.servicer import Servicer, add_to_server
from .config import Config
from .engine import Engine
from .protocol import STATUS_PREFIX
from .store import Store
from .store.connection import connect, connect_fast

log = logging.getLogger(__name__)

STATUS_NAMES = [name.removeprefix(STATUS_PREFIX) for name in pb.OrchestrationStatus.keys()]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"].full_name
HUB_REFRESH_SECONDS = 2.0
HEALTH_CHECK_SECONDS = 1.0
DEPTH_SAMPLE_SECONDS = 5.0
LEASE_SWEEP_SECONDS = 1.0
RETENTION_SECONDS = 5.0

DUE_DEPTH = prometheus_client.Gauge("dt_due_entries", "Entries waiting in the due sets", ["hub"])
READY_DEPTH = prometheus_client.Gauge("dt_ready_entries", "Instances waiting in the ready sets", ["hub"])
READY_AGE = prometheus_client.Gauge("dt_ready_oldest_age_seconds", "Age of the oldest ready entry", ["hub"])
INSTANCES = prometheus_client.Gauge("dt_instances", "Instances by status", ["hub", "status"])


class App:
    """One replica: the store, the engine (promoters and relays per task hub, dispatcher, wake-ups),
    the gRPC surface and housekeeping."""

    def __init__(self, config: Config, redis=None) -> None:
        self.config = config
        self.redis = redis if redis is not None else connect(config.redis_url, config.redis_cluster,
                                                             config.redis_max_connections)
        fast = connect_fast(config.redis_url, config.redis_cluster) if redis is None else None
        self.store = Store(self.redis, config.key_prefix, config.partitions, fast=fast, limits=config.limits)
        self.engine = Engine.build(self.store, config)
        self.health = health.aio.HealthServicer()
        self.housekeeping = AsyncIOScheduler()
        self._running_jobs: set[asyncio.Task] = set()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Start everything; returns the bound gRPC port."""
        try:
            await self.store.load_scripts()
            await self.engine.hubs.get(self.config.task_hub)
        except errors.StoreUnavailable as exc:
            log.warning("Redis is not reachable yet (%s); serving UNAVAILABLE until it is", exc)
        self.engine.wakeups.start()
        await self.engine.hubs.refresh()
        for job, seconds in ((self.engine.hubs.refresh, HUB_REFRESH_SECONDS), (self._check_health, HEALTH_CHECK_SECONDS),
                             (self.sample_depths, DEPTH_SAMPLE_SECONDS), (self.sweep_leases, LEASE_SWEEP_SECONDS),
                             (self.engine.retention.sweep, RETENTION_SECONDS)):
            self.add_housekeeping(job, seconds)
        self.housekeeping.start()

        max_message = self.config.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ])
        self.servicer = Servicer(self.engine, self.config)
        add_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        await self.server.start()
        if self.config.metrics_port is not None:
            prometheus_client.start_http_server(self.config.metrics_port, addr=self.config.host)
        await self._check_health()
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let running ones finish, then stop background work."""
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        if self.housekeeping.running:
            self.housekeeping.pause()  # shutdown() would cancel a running job mid-step: let it finish
            if self._running_jobs:
                await asyncio.wait(self._running_jobs, timeout=grace)
            self.housekeeping.shutdown(wait=False)
        await self.engine.hubs.stop()
        await self.engine.wakeups.stop()
        await self.store.aclose()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

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
        await self.engine.dispatcher.sweep(self.engine.hubs.served())

    async def sample_depths(self) -> None:
        """Queue depths and instance counts of the hubs served here, for the metrics endpoint."""
        for hub in self.engine.hubs.served():
            try:
                stats = await self.store.hub_stats(hub)
            except errors.StoreUnavailable:
                return
            DUE_DEPTH.labels(hub.hub).set(stats.due)
            READY_DEPTH.labels(hub.hub).set(stats.ready)
            oldest = stats.oldest_ready_ms
            READY_AGE.labels(hub.hub).set(0 if oldest is None else max(stats.now_ms - oldest, 0) / 1000)
            for status in STATUS_NAMES:
                INSTANCES.labels(hub.hub, status).set(stats.statuses.get(status, 0))

    async def _check_health(self) -> None:
        """SERVING only while Redis answers."""
        try:
            await self.store.ping()
            status = health_pb2.HealthCheckResponse.SERVING
        except errors.StoreUnavailable:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
