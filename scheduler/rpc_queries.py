"""RPCs that find, list, stream and purge instances (mixed into :class:`scheduler.server.Servicer`)."""
from __future__ import annotations


class QueryRPCs:
    """Uses the Servicer's ``store``, ``config``, ``_hub`` and ``_existing_hub``."""
