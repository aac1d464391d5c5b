"""RPCs by which clients change an instance's lifecycle (mixed into :class:`scheduler.server.Servicer`)."""
from __future__ import annotations


class LifecycleRPCs:
    """Uses the Servicer's ``store``, ``config``, ``_hub`` and ``_existing_hub``."""
