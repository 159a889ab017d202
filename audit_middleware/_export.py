"""The exporter contract, modelled on the OpenTelemetry SDK's exporters."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from audit_middleware._event import AuditEvent

__all__ = ["ExportResult", "Exporter"]


class ExportResult(enum.Enum):
    """What an exporter reports for one batch. ``FAILURE`` batches are retried."""

    SUCCESS = "success"
    FAILURE = "failure"


@runtime_checkable
class Exporter(Protocol):
    """Where audit events go. Called from one background thread per exporter, never concurrently.

    ``export`` may block on I/O; the pipeline never waits on it from the request path.
    Raising is treated as ``FAILURE``. Timeouts are in seconds; ``None`` means the exporter's own
    default.
    """

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Deliver ``batch`` (in order); return SUCCESS only once it is durably handed over."""
        ...

    def force_flush(self, timeout: float | None = None) -> bool:
        """Push out anything buffered; True only if everything exported so far was delivered."""
        ...

    def shutdown(self, timeout: float | None = None) -> None:
        """Release resources; no ``export`` call follows."""
        ...
