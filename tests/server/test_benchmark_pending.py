"""The pending benchmark part keeps working: ``python -m benchmarks --only pending`` at a tiny size, on a
three-master Redis Cluster and a standalone Redis it starts itself. Its figures are not judged here (the
machine is shared); what must hold at any size is: every delayed start promoted exactly once, none early,
and a new replica that starts and answers while they wait."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(600)  # two Redis topologies, each with a replica started twice and a creation lead time
def test_pending_part_promotes_each_once_never_early(tmp_path) -> None:
    out = tmp_path / "pending.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "pending", "--pending-count", "1000",
         "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    details = json.loads(out.read_text())["parts"]["pending"]["details"]
    for topology in ("cluster", "standalone"):
        d = details[topology]
        assert d["created"] == 1000, d
        assert d["promoted"] == 1000 and d["exactly_once"], d
        assert d["early"] == 0 and d["lag_p50_ms"] >= 0, d
        assert d["ready_after"] == 1000 and d["due_after"] == 0, d
        assert d["startup_loaded"]["first_answer_s"] > 0 and d["startup_loaded"]["commands"] > 0, d
    assert details["cluster"]["masters"] == 3 and details["standalone"]["masters"] == 1
