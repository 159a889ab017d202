"""Batches of events that carry their JSON lines (:mod:`audit_middleware._lines`)."""

from __future__ import annotations

from collections.abc import Sequence

from audit_middleware._event import AuditEvent
from audit_middleware._lines import event_line

__all__ = ["EventBatch", "batch_lines", "extend_batch", "new_batch"]


class EventBatch(list[AuditEvent]):
    """A batch of events with their :func:`event_line` renderings, index for index
    (``lines`` is None when they were not all rendered). Make one with :func:`new_batch`."""

    __slots__ = ("lines",)
    lines: list[bytes] | None


def new_batch() -> EventBatch:
    """An empty :class:`EventBatch` with an empty list of lines."""
    batch = EventBatch()
    batch.lines = []
    return batch


def extend_batch(batch: EventBatch, more: EventBatch) -> None:
    """Append ``more``'s events to ``batch``, and its lines while both have them."""
    batch.extend(more)
    if batch.lines is not None:
        if more.lines is None:
            batch.lines = None
        else:
            batch.lines.extend(more.lines)


def batch_lines(batch: Sequence[AuditEvent]) -> list[bytes]:
    """The lines of ``batch``: rendered already when it is a complete :class:`EventBatch`."""
    if type(batch) is EventBatch:
        lines = batch.lines
        if lines is not None and len(lines) == len(batch):
            return lines
    return [event_line(event) for event in batch]
