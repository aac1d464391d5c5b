"""Where the steady latency of a one-activity orchestration goes, hop by hop, ours against the reference.

    python -m benchmarks.hops [--count 300] [--rounds 3]

For each side in alternating rounds, ``e2e_driver.py hops`` runs an SDK worker and client in one
process and times COUNT orchestrations one at a time: the StartInstance call; from its start to the
worker receiving the first episode; from there to the activity; to the second episode; to the return of
the client's ``wait_for_orchestration_completion``. Each hop is one worker call (or the start) plus one
server step, so the per-hop ratio says whether the difference is one slow step or a cost every step pays.
Prints the median of each hop per round and the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from scheduler import testing

from . import ref_backend
from .common import log, median
from .e2e import REPO
from .e2e_driver import HOPS


def _hops(address: str, count: int, prefix: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.e2e_driver", "hops", address, str(count), prefix],
                         cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rounds: list[dict[str, dict[str, float]]] = []
    ref_proc, ref_address = ref_backend.start()
    try:
        with testing.redis_server() as redis_url:
            server = testing.start_server(redis_url)
            try:
                for k in range(args.rounds):
                    log(f"hops round {k + 1}/{args.rounds}")
                    rounds.append({"reference": _hops(ref_address, args.count, f"ref-{k}"),
                                   "ours": _hops(server.address, args.count, f"ours-{k}")})
            finally:
                server.stop()
    finally:
        ref_backend.stop(ref_proc)
    print(f"{'hop (median ms)':28s} {'ours':>8s} {'reference':>10s} {'ratio':>7s}")
    for hop in HOPS:
        ours, ref = median([r["ours"][hop] for r in rounds]), median([r["reference"][hop] for r in rounds])
        ratio = median([r["ours"][hop] / r["reference"][hop] for r in rounds])
        print(f"{hop:28s} {ours:8.3f} {ref:10.3f} {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
