"""The engine: the rules of orchestrations and the replica's background work, over the store.

- ``orchestrations.py``: what client calls and worker results do (one entry point per change);
  ``entities.py``: the same for durable entities;
  ``episodes.py`` reads a worker's result, ``events.py`` builds the protocol's messages,
  ``subtree.py`` follows sub-orchestrations.
- ``dispatcher.py`` and ``streams.py``: work streams, leases and offers of this replica;
  ``work_kinds.py``: how each kind of work item (orchestration, activity, entity batch) is claimed,
  renewed and handed back.
- ``hubs.py``: the task hubs served here, each with a ``promoter.py`` and a ``relay.py`` loop
  (``loops.py``: the one loop shape); ``wakeups.py`` routes the pub/sub wake-ups;
  ``waiters.py``: callers waiting for a status; ``retention.py`` purges what finished long ago.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..store import Store
from .dispatcher import Dispatcher
from .entities import Entities
from .hubs import Hubs
from .orchestrations import Orchestrations
from .retention import Retention
from .waiters import Waiters
from .wakeups import Wakeups


@dataclass
class Engine:
    """The engine's parts of one replica, wired together (see :meth:`build`)."""

    store: Store
    dispatcher: Dispatcher
    waiters: Waiters
    orchestrations: Orchestrations
    entities: Entities
    hubs: Hubs
    wakeups: Wakeups
    retention: Retention

    @classmethod
    def build(cls, store: Store, config: Config) -> Engine:
        dispatcher = Dispatcher(store, config)
        waiters = Waiters()
        orchestrations = Orchestrations(store, dispatcher, waiters)
        dispatcher.fail_claimed = orchestrations.fail_claimed
        entities = Entities(store, dispatcher)
        dispatcher.fail_batch = entities.fail_batch
        hubs = Hubs(store, orchestrations, entities, config.promote_batch)
        return cls(store, dispatcher, waiters, orchestrations, entities, hubs,
                   Wakeups(store, hubs, dispatcher, waiters),
                   Retention(store, hubs, config.retention_seconds))
