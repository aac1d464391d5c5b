"""A SIGTERM that comes before the replica's event loop listens for it (while Python still imports).

Kubernetes may stop a pod at any moment, also while it starts; without this, a SIGTERM during the
imports kills the process (exit -15) instead of stopping it. ``python -m scheduler`` notes SIGTERM
from its first line; ``runner.serve`` honours a noted one as soon as its loop listens. Commands other
than ``serve`` get the default behaviour back.
"""
from __future__ import annotations

import signal

_requested = False


def _note(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    global _requested
    _requested = True


def note_sigterm() -> None:
    signal.signal(signal.SIGTERM, _note)


def forget() -> None:
    """Back to the default SIGTERM (a command that serves nothing)."""
    if signal.getsignal(signal.SIGTERM) is _note:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def requested() -> bool:
    """True when a SIGTERM came before the event loop listened."""
    return _requested
