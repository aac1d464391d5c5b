"""Command line: ``dt-scheduler serve`` runs a replica, ``dt-scheduler inspect`` shows a hub's queues."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from multiprocessing.connection import Connection

from . import config as config_mod
from . import logs
from .inspector import configure_hub, inspect_hubs

log = logging.getLogger("scheduler")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dt-scheduler", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run one replica of the TaskHubSidecarService")
    config_mod.add_arguments(run)
    insp = sub.add_parser("inspect", help="print, per task hub, instances by status and the due/ready queues")
    config_mod.add_arguments(insp)
    insp.add_argument("--all-hubs", action="store_true", help="every hub on this Redis, not only --task-hub")
    insp.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="repeat every SECONDS until Ctrl-C")
    conf = sub.add_parser("configure-hub", help="set what one task hub keeps (its own retention)")
    config_mod.add_arguments(conf)
    which = conf.add_mutually_exclusive_group(required=True)
    which.add_argument("--hub-retention-seconds", type=float, metavar="SECONDS",
                       help="purge the hub's finished instances this long after they ended (0: keep them), "
                            "whatever --retention-seconds the replicas have")
    which.add_argument("--clear-hub-retention", action="store_true",
                       help="the hub follows the replicas' --retention-seconds again")
    sub.add_parser("hash-token", help="print the SHA-256 hash of a token read from standard input, for "
                                      "--auth-tokens-file")
    return parser


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
    app = App(cfg)
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
            log.info("stopped while starting")
        error = None if starting.cancelled() else starting.exception()
        await app.store.aclose()
        if isinstance(error, StartupError):
            if supervisor is not None:
                _tell(supervisor, ("error", str(error)))  # it says it once, for every process
            else:
                print(f"dt-scheduler: {error}", file=sys.stderr)
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
    security = ("mutual TLS" if cfg.tls_client_ca_file else "TLS") if cfg.tls_cert_file else "plaintext"
    auth = "bearer tokens" if cfg.authenticates else "NO authentication"
    log.info("serving TaskHubSidecarService on %s:%d (%s, %s; task hub %r, %s)", cfg.host, port, security, auth,
             cfg.task_hub, store)
    if not cfg.authenticates and cfg.allow_unauthenticated:
        log.warning("--allow-unauthenticated: anyone who can reach %s:%d can start, terminate, purge and delete "
                    "everything", cfg.host, port)
    if supervisor is not None:
        _tell(supervisor, ("ready", port))
    else:  # a line for scripts and tests that start us with --port 0
        print(f"READY {cfg.host}:{port}", flush=True)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-token":
        token = sys.stdin.readline().rstrip("\n")
        if not token:
            print("dt-scheduler hash-token: give the token on standard input", file=sys.stderr)
            return 2
        from .api.auth import hash_token

        print(hash_token(token))
        return 0
    try:
        cfg = config_mod.from_args(args)
    except ValueError as exc:
        print(f"dt-scheduler: {exc}", file=sys.stderr)
        return 2
    several = args.command == "serve" and cfg.processes > 1
    logs.configure(cfg.log_level, cfg.log_format, cfg.replica, process=0 if several else None)
    if several:
        from .processes import supervise

        return supervise(cfg)
    use_uvloop()
    if args.command == "serve":
        return asyncio.run(serve(cfg))
    if args.command == "configure-hub":
        retention = None if args.clear_hub_retention else args.hub_retention_seconds
        return asyncio.run(configure_hub(cfg, retention))
    return asyncio.run(inspect_hubs(cfg, all_hubs=args.all_hubs, watch=args.watch))


if __name__ == "__main__":
    sys.exit(main())
