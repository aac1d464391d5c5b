"""``python -m scheduler inspect`` shows what the SDK scheduled, before and after promotion."""
from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client

from e2e_helpers import due_ms, poll

pytestmark = pytest.mark.e2e


def _inspect(redis_url: str, key_prefix: str, hub_name: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "scheduler", "inspect", "--redis-url", redis_url,
         "--key-prefix", key_prefix, "--task-hub", hub_name, "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("dataset identity: ") and "LOST" not in out.stdout, out.stdout
    assert lines[1] == f"task hub {hub_name!r} (4 partitions)", out.stdout
    view = {}
    for line in lines[2:]:
        name, _, rest = line.strip().partition(": ")
        view[name] = rest
    return view


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def test_inspect_shows_the_due_entry_then_the_ready_one(server, redis_url, key_prefix, hub_name, probe):
    sdk = client.TaskHubGrpcClient(host_address=server.address)
    try:
        sdk.schedule_new_orchestration("Now", instance_id="now-1")
        soon = datetime.now(timezone.utc) + timedelta(seconds=2)
        far = datetime.now(timezone.utc) + timedelta(hours=1)
        sdk.schedule_new_orchestration("Soon", instance_id="soon-1", start_at=soon)
        sdk.schedule_new_orchestration("Far", instance_id="far-1", start_at=far)
    finally:
        sdk.close()

    before = _inspect(redis_url, key_prefix, hub_name)
    assert probe.where_is("soon-1").due_score == due_ms(soon), "the first look must happen before the due time"
    assert before["instances by status"] == "PENDING=3"
    assert re.fullmatch(rf"2 entries, next due {re.escape(_iso(due_ms(soon)))} \(in \d+\.\d{{3}}s\)",
                        before["due set"]), before
    assert re.fullmatch(r"1 entries, oldest waiting \d+\.\d{3}s", before["ready queue"]), before

    poll(lambda: probe.where_is("soon-1").ready_score is not None, timeout=10, what="promotion of soon-1")
    after = _inspect(redis_url, key_prefix, hub_name)
    assert after["instances by status"] == "PENDING=3"
    assert re.fullmatch(rf"1 entries, next due {re.escape(_iso(due_ms(far)))} \(in \d+\.\d{{3}}s\)",
                        after["due set"]), after
    assert re.fullmatch(r"2 entries, oldest waiting \d+\.\d{3}s", after["ready queue"]), after


def test_inspect_of_an_empty_hub(server, redis_url, key_prefix, hub_name):
    view = _inspect(redis_url, key_prefix, hub_name)
    assert view == {"instances by status": "none", "due set": "0 entries, next due -",
                    "ready queue": "0 entries, oldest waiting -"}


def test_inspect_never_creates_the_hub_it_is_asked_about(redis_url, key_prefix, hub_name, rds):
    """A typo in --task-hub must not create a hub (every replica would start serving it)."""
    out = subprocess.run(
        [sys.executable, "-m", "scheduler", "inspect", "--redis-url", redis_url,
         "--key-prefix", key_prefix, "--task-hub", hub_name + "-typo", "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == f"task hub {hub_name + '-typo'!r}: no such hub", out.stdout
    assert list(rds.scan_iter(match=f"{key_prefix}:*")) == []


def test_configure_hub_sets_and_clears_the_hubs_own_retention(server, redis_url, key_prefix, hub_name, rds,
                                                              hub_keys):
    def configure(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler", "configure-hub", "--redis-url", redis_url,
                               "--key-prefix", key_prefix, "--task-hub", hub_name, *flags],
                              capture_output=True, text=True, timeout=30)

    out = configure("--hub-retention-seconds", "3600")
    assert out.returncode == 0 and "purges finished instances 3600 s after they ended" in out.stdout, out
    assert rds.hget(hub_keys.meta, "retention_seconds") == b"3600.0"
    out = configure("--clear-hub-retention")
    assert out.returncode == 0 and "follows --retention-seconds" in out.stdout, out
    assert rds.hget(hub_keys.meta, "retention_seconds") is None
    out = subprocess.run([sys.executable, "-m", "scheduler", "configure-hub", "--redis-url", redis_url,
                          "--key-prefix", key_prefix, "--task-hub", hub_name + "-none", "--hub-retention-seconds",
                          "1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "does not exist" in out.stdout
    assert not rds.exists(f"{key_prefix}:{{{hub_name}-none}}:meta")
