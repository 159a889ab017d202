"""An exporter that keeps events in memory, for tests (yours and ours)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from audit_middleware._event import AuditEvent
from audit_middleware._export import ExportResult

__all__ = ["InMemoryExporter"]


class InMemoryExporter:
    """Collects exported events in order; ``fail_next(n)`` makes the next n exports fail."""

    def __init__(self) -> None:
        self._events: list[AuditEvent] = []
        self._lock = threading.Lock()
        self._failures = 0
        self.export_calls = 0
        self.shut_down = False

    @property
    def events(self) -> list[AuditEvent]:
        """A copy of the events exported so far."""
        with self._lock:
            return list(self._events)

    def fail_next(self, n: int) -> None:
        """Return FAILURE from the next ``n`` export calls."""
        with self._lock:
            self._failures = n

    def clear(self) -> None:
        """Forget the events exported so far."""
        with self._lock:
            self._events.clear()

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Keep ``batch`` unless a failure was requested."""
        with self._lock:
            self.export_calls += 1
            if self._failures:
                self._failures -= 1
                return ExportResult.FAILURE
            self._events.extend(batch)
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Mark as shut down."""
        self.shut_down = True
