"""Store operations that find, list and purge instances (mixed into :class:`Store`)."""
from __future__ import annotations


class QueryOps:
    """Uses the Store's ``_eval`` (scripts through the request connection) and ``redis``."""

    SCRIPTS: tuple[str, ...] = ()  # names of this module's scripts in lua/, registered by the Store
