"""Fixtures for Dapr Workflow's SDK (``durabletask-dapr``) against ``scheduler serve --dapr-port`` (see
dapr_helpers.py)."""
from __future__ import annotations

import pytest

from dapr_helpers import Scenarios, dapr_venv, dapr_wheel_file


@pytest.fixture(scope="session")
def dapr_python() -> str:
    """The interpreter of a venv with durabletask-dapr (made on first use, then reused)."""
    return dapr_venv()


@pytest.fixture(scope="session")
def dapr_wheel():
    """The SDK's wheel (downloaded once), to read its contract from."""
    return dapr_wheel_file()


@pytest.fixture(scope="session")
def dapr(dapr_python: str) -> Scenarios:
    return Scenarios(dapr_python)
