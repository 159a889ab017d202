"""The exporter contract, modelled on the OpenTelemetry SDK's exporters."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from audit_middleware._event import AuditEvent

__all__ = ["DurableExporter", "ExportResult", "Exporter"]


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

    Two optional class attributes tune the pipeline (both default to False):

    * ``writes_lines``: the exporter writes each event as ``orjson.dumps(event.to_dict())``
      plus a newline. The pipeline then renders those lines once, in its dispatcher, and passes
      them with the batch; read them with ``audit_middleware.batch_lines(batch)``.
    * ``merges_batches``: batches that queued up while an ``export`` call was busy may be
      merged into one larger call (up to 8,192 events), e.g. to write and fsync once for all.
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


@runtime_checkable
class DurableExporter(Exporter, Protocol):
    """An exporter that can make events durable synchronously, for strict mode.

    ``write_through`` returns once the events are on stable storage (e.g. fsynced to a local
    spool) and raises otherwise; the same events later arrive through ``export`` too and must
    then be skipped, so each is stored once.
    """

    durable: bool

    def write_through(self, events: Sequence[AuditEvent]) -> None:
        """Store ``events`` durably now, or raise."""
        ...
