"""Command line: ``dt-scheduler serve`` runs a replica, ``dt-scheduler inspect`` shows a hub's queues."""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

from . import config as config_mod
from . import logs, stopping
from .inspector import adopt_dataset, configure_hub, inspect_hubs
from .runner import serve, use_uvloop


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
    data = sub.add_parser("dataset", help="the dataset identity: `dataset adopt` accepts what Redis holds now "
                                          "after replicas found it lost (emptied, replaced)")
    config_mod.add_arguments(data)
    data.add_argument("action", choices=["adopt"], help="adopt: give Redis a new identity that every replica takes, "
                                                        "so they write again")
    sub.add_parser("hash-token", help="print the SHA-256 hash of a token read from standard input, for "
                                      "--auth-tokens-file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        stopping.forget()
    if args.command == "hash-token":
        token = sys.stdin.readline().rstrip("\n")
        if not token:
            print("dt-scheduler hash-token: give the token on standard input", file=sys.stderr)
            return 2
        from .api.tokens import hash_token

        print(hash_token(token))
        return 0
    try:
        cfg = config_mod.from_args(args)
    except ValueError as exc:
        if (args.log_format or os.environ.get("DT_LOG_FORMAT")) == "json":  # the error is one JSON line too
            replica = args.replica or os.environ.get("DT_REPLICA") or os.environ.get("HOSTNAME") or socket.gethostname()
            logs.configure("INFO", "json", replica)
        logs.fatal(str(exc))
        return 2
    several = args.command == "serve" and cfg.processes > 1
    logs.configure(cfg.log_level, cfg.log_format, cfg.replica, process=0 if several else None)
    if several:
        from .processes import supervise

        return supervise(cfg)
    use_uvloop()
    if args.command == "serve":
        return asyncio.run(serve(cfg))
    if args.command == "dataset":
        return asyncio.run(adopt_dataset(cfg))
    if args.command == "configure-hub":
        retention = None if args.clear_hub_retention else args.hub_retention_seconds
        return asyncio.run(configure_hub(cfg, retention))
    return asyncio.run(inspect_hubs(cfg, all_hubs=args.all_hubs, watch=args.watch))


if __name__ == "__main__":
    sys.exit(main())
