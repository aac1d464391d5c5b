"""This replica's one subscription to the wake-ups (store/notify.py), routed to whom they concern.

``due`` wakes the hub's promoter, ``outbox`` its relay, ``work`` the dispatcher's streams,
``status`` the waiters on that instance, ``deleted`` stops serving the hub. The
subscription reconnects with back-off when it is lost; once it listens again every waiter,
promoter, relay and stream is woken, since anything may have happened meanwhile.
"""
from __future__ import annotations

import asyncio
import logging

from ..store import Store
from ..store import notify
from ..store.notify import Wakeup
from .dispatcher import Dispatcher
from .hubs import Hubs
from .loops import MAX_BACKOFF, MIN_BACKOFF, cancel_and_wait
from .waiters import Waiters

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, store: Store, hubs: Hubs, dispatcher: Dispatcher, waiters: Waiters) -> None:
        self.store = store
        self.hubs = hubs
        self.dispatcher = dispatcher
        self.waiters = waiters
        self.connected = asyncio.Event()  # set while the subscription listens
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wakeups")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def route(self, wakeup: Wakeup) -> None:
        if wakeup.kind in (notify.DUE, notify.STATUS, notify.WORK, notify.OUTBOX):
            self.hubs.heard(wakeup.hub)
        if wakeup.kind == notify.DUE:
            self.hubs.due_at(wakeup.hub, wakeup.due_ms, None if wakeup.queue is None else wakeup.queue[1])
        elif wakeup.kind == notify.STATUS:
            self.waiters.status_changed(wakeup.hub, wakeup.instance_id)
        elif wakeup.kind == notify.WORK:
            self.dispatcher.work_available(wakeup.hub, wakeup.queue)
        elif wakeup.kind == notify.OUTBOX:
            self.hubs.outbox_written(wakeup.hub, None if wakeup.queue is None else wakeup.queue[1])
        elif wakeup.kind == notify.DELETED:
            self.hubs.forget(wakeup.hub)
        elif wakeup.kind == "subscribed":
            self.connected.set()
            # anything may have happened while we were not listening
            self.waiters.wake_all()
            self.hubs.wake_all()
            self.dispatcher.look_everywhere()

    async def _run(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            try:
                async for wakeup in self.store.wakeups():
                    backoff = MIN_BACKOFF
                    self.route(wakeup)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect whatever went wrong
                log.warning("wake-up subscription lost (%s); reconnecting in %.2fs", exc, backoff)
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
