"""Run the benchmarks and print a summary table:
``python -m benchmarks [--quick] [--only rpc,promotion,memory,e2e,timers,idle,scale,fleet,pending,entities,chaos,wait]``.

Results also go to ``benchmarks/results/latest.json`` (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from .common import PartResult, log, summary_table

PARTS = ("rpc", "promotion", "memory", "e2e", "timers", "idle", "scale", "fleet", "pending", "entities", "chaos", "wait")
# A million delayed starts take 10-40 minutes per Redis topology to create on 2 cores: named, not by default.
DEFAULT_PARTS = tuple(p for p in PARTS if p != "pending")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


def _git_state() -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "scheduler_changes_uncommitted": bool(git("status", "--porcelain", "--", "scheduler"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows (a smoke run)")
    parser.add_argument("--only", default=",".join(DEFAULT_PARTS),
                        help=f"comma-separated parts to run ({', '.join(PARTS)}; default all but pending)")
    parser.add_argument("--rpc-duration", type=float, default=None,
                        help="seconds per RPC window (rpc, scale: 6; quick 2)")
    parser.add_argument("--rpc-rounds", type=int, default=None,
                        help="rounds, each one window per side and RPC (rpc, scale: 5; quick 1)")
    parser.add_argument("--scale-count", type=int, default=None,
                        help="instances in the scale run (100000; quick 10000)")
    parser.add_argument("--pending-count", type=int, default=None,
                        help="delayed starts in the pending part (1000000; quick 20000)")
    parser.add_argument("--pending-on", default="cluster,standalone",
                        help="Redis topologies of the pending part (cluster: three masters; standalone)")
    parser.add_argument("--output", default=RESULTS, help=f"JSON results file (default {RESULTS})")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    started = time.monotonic()
    results: list[PartResult] = []
    for part in PARTS:
        if part not in chosen:
            continue
        if part == "rpc":
            from . import rpc
            results.append(rpc.run(quick=args.quick, duration=args.rpc_duration, rounds=args.rpc_rounds))
        elif part == "promotion":
            from . import promotion
            results.append(promotion.run(quick=args.quick, scale_count=args.scale_count))
        elif part == "e2e":
            from . import e2e
            results.append(e2e.run(quick=args.quick))
        elif part == "timers":
            from . import timers
            results.append(timers.run(quick=args.quick))
        elif part == "idle":
            from . import idle
            results.append(idle.run(quick=args.quick))
        elif part == "scale":
            from . import scale
            results.append(scale.run(quick=args.quick, duration=args.rpc_duration, rounds=args.rpc_rounds))
        elif part == "fleet":
            from . import fleet
            results.append(fleet.run(quick=args.quick))
        elif part == "pending":
            from . import pending
            results.append(pending.run(quick=args.quick, count=args.pending_count,
                                       topologies=tuple(t.strip() for t in args.pending_on.split(",") if t.strip())))
        elif part == "entities":
            from . import entities
            results.append(entities.run(quick=args.quick))
        elif part == "wait":
            from . import wait
            results.append(wait.run(quick=args.quick, duration=args.rpc_duration, rounds=args.rpc_rounds))
        elif part == "chaos":
            from . import chaos
            results.append(chaos.run(quick=args.quick))
        else:
            from . import memory
            results.append(memory.run(quick=args.quick))
    elapsed = time.monotonic() - started

    table = summary_table(results)
    print()
    print(f"== benchmark summary ({'quick' if args.quick else 'full'} run, {elapsed:.0f}s, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}) ==")
    print(table)

    failed = [f"{r.part}: {r.metric}" for p in results for r in p.rows if r.ok is False]
    doc = {"run": {"quick": args.quick, "parts": chosen, "seconds": elapsed, "cpus": os.cpu_count(),
                   "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   **_git_state()},
           "targets_missed": failed,
           "parts": {p.name: p.to_json() for p in results}}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
    log(f"results written to {args.output}")
    # Missed targets are findings, not errors: the exit code only reports crashes.
    return 0


if __name__ == "__main__":
    sys.exit(main())
