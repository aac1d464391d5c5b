"""Store operations by which clients change an instance's lifecycle (mixed into :class:`Store`)."""
from __future__ import annotations


class LifecycleOps:
    """Uses the Store's ``_eval`` (scripts through the request connection) and ``redis``."""

    SCRIPTS: tuple[str, ...] = ()  # names of this module's scripts in lua/, registered by the Store
