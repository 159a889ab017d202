"""Helpers for testing applications that use audit_middleware.

>>> with capture_audit_events() as events:
...     client.post("/auth/login", json={...})
>>> assert events.actions == ["user.login.failed"]
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from audit_middleware import _hooks
from audit_middleware._event import AuditEvent
from exporters.memory import InMemoryExporter

__all__ = ["CapturedEvents", "InMemoryExporter", "capture_audit_events"]


class CapturedEvents(list[AuditEvent]):
    """The events built while capturing, in order, with a few conveniences."""

    @property
    def actions(self) -> list[str]:
        """The action of each captured event."""
        return [e.action for e in self]

    def of(self, action: str) -> list[AuditEvent]:
        """Captured events with this action."""
        return [e for e in self if e.action == action]


@contextmanager
def capture_audit_events(*, deliver: bool = False) -> Iterator[CapturedEvents]:
    """Collect every audit event built inside the block, synchronously.

    Events are built on the request path while capturing, so they are in the list as soon as
    the request returns. With ``deliver=False`` (the default) they are not sent to exporters.
    """
    events = CapturedEvents()
    lock = threading.Lock()

    def observe(event: AuditEvent) -> None:
        with lock:
            events.append(event)

    _hooks.add_observer(observe, inline=True, deliver=deliver)
    try:
        yield events
    finally:
        _hooks.remove_observer(observe, inline=True, deliver=deliver)
