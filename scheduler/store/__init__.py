"""The store: the only code that knows Redis (and the only code that imports redis).

- ``store.py``: :class:`Store`, one method per domain operation, each one round trip; its
  operations are grouped in ``instances.py``, ``work.py``, ``orchestrations.py``,
  ``activities.py``, ``entities.py`` and ``queries.py``.
- ``keys.py``: every key name; ``records.py``: what operations take and return.
- ``scripts.py`` and ``lua/``: the Lua scripts, their shared prelude and their result codes.
- ``connection.py``, ``pipelining.py``: connections and the shared round trips of the request path.
- ``notify.py``: the pub/sub wake-ups between replicas.
"""
from .entities import EntityClaim, EntityRecord
from .records import Claim, Cursor, Found, HubStats, InstanceFilter, NewInstance, Promotion
from .store import SCHEMA_VERSION, Store

__all__ = ["Claim", "Cursor", "EntityClaim", "EntityRecord", "Found", "HubStats", "InstanceFilter", "NewInstance", "Promotion", "SCHEMA_VERSION",
           "Store"]
