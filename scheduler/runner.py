"""One replica's lifecycle as a process runs it: start, serve until SIGTERM or SIGINT, drain, stop; and,
under the supervisor of ``serve --processes N`` (processes.py), its end of the supervisor's pipe.
Both the command line (cli.py) and the supervisor's processes run a replica through here."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
from multiprocessing.connection import Connection

from . import config as config_mod
from . import logs
from .stopping import requested as stop_requested_early

log = logging.getLogger("scheduler")


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works too
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(cfg: config_mod.Config, supervisor: Connection | None = None) -> int:
    """Run one replica until SIGTERM or SIGINT; the exit code. Under a supervisor (--processes N, see
    processes.py) it reports ready or a startup error through ``supervisor`` instead of printing, and
    stops as on SIGTERM when the supervisor is gone (its end of the pipe closed)."""
    from .app import App, StartupError  # the gRPC stack is only needed to serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # honoured from now on, also while starting
        loop.add_signal_handler(sig, stop.set)
    if stop_requested_early():  # a SIGTERM came while Python was still importing
        stop.set()
    try:
        app = App(cfg)
    except StartupError as exc:  # the tokens file cannot be used
        if supervisor is not None:
            _tell(supervisor, ("error", str(exc)))
        else:
            logs.fatal(str(exc))
        return 2
    draining = False
    if supervisor is not None:
        def supervisor_gone() -> None:  # readable means closed: the supervisor never writes
            loop.remove_reader(supervisor.fileno())
            if not draining:  # as a first SIGTERM; while draining it changes nothing
                log.warning("the supervisor is gone: shutting down")
                stop.set()

        loop.add_reader(supervisor.fileno(), supervisor_gone)
    starting = asyncio.ensure_future(app.start())
    await asyncio.wait({starting, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done() or starting.exception() is not None:
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)  # until the start has unwound
            log.info("stopped while starting")
        error = None if starting.cancelled() else starting.exception()
        await app.store.aclose()
        if isinstance(error, StartupError):
            if supervisor is not None:
                _tell(supervisor, ("error", str(error)))  # it says it once, for every process
            else:
                logs.fatal(str(error))
            return 2
        if error is not None:
            raise error
        return 0
    port = starting.result()
    # What exists now (modules, generated protobuf classes: ~50k objects) lives as long as the process.
    # Frozen, the collector stops scanning it: full collections take ~1 ms instead of 20-35 ms, which
    # otherwise show up as late promotions and slow episodes.
    gc.collect()
    gc.freeze()
    store = f"Redis at {config_mod.redacted(cfg.redis_url)}" if cfg.redis_url else "the EMBEDDED store"
    if cfg.redis_sentinels:
        store = (f"the primary {cfg.redis_sentinel_master!r} of Sentinels {cfg.redis_sentinels} "
                 f"(options of {config_mod.redacted(cfg.redis_url)})")
    if cfg.redis_min_replica_acks:
        store += (f", writes acknowledged once {cfg.redis_min_replica_acks} replica(s) have them "
                  f"(within {cfg.redis_replica_ack_timeout_ms} ms)")
    security = ("mutual TLS" if cfg.tls_client_ca_file else "TLS") if cfg.tls_cert_file else "plaintext"
    auth = "bearer tokens" if cfg.authenticates else "NO authentication"
    if cfg.auth_jwks_file:
        auth += f" and JWTs (audience {cfg.auth_jwt_audience!r}, issuer {cfg.auth_jwt_issuer!r})"
    log.info("serving TaskHubSidecarService on %s:%d (%s, %s; task hub %r, %s)", cfg.host, port, security, auth,
             cfg.task_hub, store)
    if app.dapr_port is not None:
        log.info("serving Dapr Workflow's TaskHubSidecarService on %s:%d", cfg.host, app.dapr_port)
    if not cfg.authenticates and cfg.allow_unauthenticated:
        log.warning("--allow-unauthenticated: anyone who can reach %s:%d can start, terminate, purge and delete "
                    "everything", cfg.host, port)
    if supervisor is not None:
        _tell(supervisor, ("ready", port))
    else:  # a line for scripts and tests that start us with --port 0
        logs.ready(f"{cfg.host}:{port}", None if app.dapr_port is None else f"{cfg.host}:{app.dapr_port}")
    await stop.wait()
    draining = True
    log.info("shutting down: draining for up to %g s", cfg.shutdown_grace_seconds)
    stop.clear()
    stopping = asyncio.ensure_future(app.stop())
    await asyncio.wait({stopping, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():  # a second signal: no more grace
        log.warning("second signal: stopping at once")
        stopping.cancel()
        await app.store.aclose()
    return 0


def _tell(supervisor: Connection, message: tuple) -> None:
    try:
        supervisor.send(message)
    except OSError:  # it is gone: its closed pipe stops this process too
        pass
