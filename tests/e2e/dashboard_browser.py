"""Helpers of the dashboard's browser tests: Debian's chromium driven by Playwright (no browser download:
``chromium.launch(executable_path=...)``), and plain HTTP to the dashboard's JSON endpoints."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    """The system's chromium (``.ci/run`` installs Debian's); the tests skip, saying so, without one."""
    found = os.environ.get("DT_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's 'chromium'; or set DT_CHROMIUM)")
    return found


def browser() -> Iterator:
    """A headless chromium for a module's tests."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def get_json(url: str, token: str | None = None, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) of one request to the dashboard."""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def dump_dom(url: str) -> str:
    """The DOM of ``url`` once chromium has loaded it (``--headless --dump-dom``, a browser of its own)."""
    done = subprocess.run([chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout
