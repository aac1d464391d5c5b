"""Dapr Workflow's SDK (``durabletask-dapr``) for the tests: its import name is ``durabletask``, like the
official SDK's in this venv (and it needs protobuf < 7), so it runs in a venv of its own, made once under
``.dapr-sdk/`` in the repository (gitignored), keyed by the SDK's version, and reused. Scenarios
(dapr_scenarios.py) run there as subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DAPR_SDK_VERSION = "0.17.4"
REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".dapr-sdk"
SCENARIOS = Path(__file__).with_name("dapr_scenarios.py")
SCENARIO_TIMEOUT = 120.0


def _pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True)


def dapr_venv() -> str:
    """The interpreter of the venv with durabletask-dapr (made on first use)."""
    venv = CACHE / f"durabletask-dapr-{DAPR_SDK_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        _pip("install", f"durabletask-dapr=={DAPR_SDK_VERSION}", "pytest", "pytest-asyncio", python=str(python))
        marker.write_text("ok\n")
    return str(python)


def dapr_wheel_file() -> Path:
    """The SDK's wheel (downloaded once)."""
    where = CACHE / "wheels"
    wheel = where / f"durabletask_dapr-{DAPR_SDK_VERSION}-py3-none-any.whl"
    if not wheel.exists():
        _pip("download", "--no-deps", "--only-binary", ":all:", "-d", str(where),
             f"durabletask-dapr=={DAPR_SDK_VERSION}")
    return wheel


class Scenarios:
    def __init__(self, python: str) -> None:
        self.python = python

    def run(self, name: str, address: str, **args) -> dict:
        """Run scenario ``name`` of dapr_scenarios.py with the Dapr SDK against ``address``; its JSON result."""
        done = subprocess.run([self.python, str(SCENARIOS), name, address, json.dumps(args)], capture_output=True,
                              text=True, timeout=SCENARIO_TIMEOUT, env={**os.environ, "PYTHONPATH": ""})
        assert done.returncode == 0, f"scenario {name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def start(self, name: str, address: str, **args) -> subprocess.Popen:
        """Start a long-running scenario (a worker); it prints READY when it serves and runs until stdin closes."""
        proc = subprocess.Popen([self.python, str(SCENARIOS), name, address, json.dumps(args)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY", f"scenario {name} did not start"
        return proc


def stop(proc: subprocess.Popen) -> None:
    """End a worker scenario started by :meth:`Scenarios.start` (closing its stdin)."""
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(30)
