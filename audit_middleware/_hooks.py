"""Observers of built events, used by :mod:`audit_middleware.testing`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from audit_middleware._event import AuditEvent

__all__ = ["Observer", "add_observer", "notify", "remove_observer", "state"]

Observer = Callable[[AuditEvent], None]


class _State:
    """``inline`` > 0 makes events build on the request path; ``deliver`` = False keeps them
    from exporters (while ``capture_audit_events(deliver=False)`` is active)."""

    def __init__(self) -> None:
        self.observers: tuple[Observer, ...] = ()
        self.inline = 0
        self.suppress_delivery = 0
        self.lock = threading.Lock()


state = _State()


def add_observer(observer: Observer, *, inline: bool, deliver: bool) -> None:
    """Call ``observer`` with every event built from now on."""
    with state.lock:
        state.observers = (*state.observers, observer)
        state.inline += inline
        state.suppress_delivery += not deliver


def remove_observer(observer: Observer, *, inline: bool, deliver: bool) -> None:
    """Undo :func:`add_observer`."""
    with state.lock:
        observers = list(state.observers)
        observers.remove(observer)
        state.observers = tuple(observers)
        state.inline -= inline
        state.suppress_delivery -= not deliver


def notify(event: AuditEvent) -> None:
    """Pass ``event`` to every observer."""
    for observer in state.observers:
        observer(event)
