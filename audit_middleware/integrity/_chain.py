"""The per-stream hash chain: every event gets ``integrity = {stream, seq, prev, hash}``.

One stream per writing process. ``seq`` counts from 1 without gaps; ``prev`` is the previous
event's ``hash`` (:data:`~._canonical.GENESIS` for the first). With a durable archive the chain's
head is kept with the spool, so a restarted process continues its predecessor's stream instead
of starting a new one (see ``exporters.archive.ArchiveExporter.chain_head``).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from audit_middleware._batch import EventBatch, new_batch
from audit_middleware._event import AuditEvent
from audit_middleware.integrity._canonical import GENESIS
from audit_middleware.integrity._seal import seal_events

__all__ = ["ChainHead", "EventChain", "new_stream_id"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9.-]")


def new_stream_id() -> str:
    """A fresh stream name, safe in object keys: ``<host>-<16 hex digits>``."""
    host = _UNSAFE.sub("-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.urandom(8).hex()}"


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a stream stands: its name, the last ``seq`` used and that event's hash."""

    stream: str
    seq: int = 0
    hash: str = GENESIS


_live_chains: weakref.WeakSet[EventChain] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent's thread at fork time would never be released in the child.
    for chain in list(_live_chains):
        chain._lock = threading.Lock()
        chain._started = False  # the child continues from its own origin


os.register_at_fork(after_in_child=_after_fork_in_child)


class EventChain:
    """Give events their place in the stream, in the order :meth:`seal` sees them (thread-safe).

    ``origin`` is called once per process (again after ``fork``) for the head to continue from.
    """

    def __init__(self, origin: Callable[[], ChainHead] | None = None) -> None:
        self._origin = origin or (lambda: ChainHead(new_stream_id()))
        self._lock = threading.Lock()
        _live_chains.add(self)
        self._started = False
        self._stream = ""
        self._seq = 0
        self._hash = GENESIS

    @property
    def head(self) -> ChainHead:
        """The current head (starting the stream if needed)."""
        with self._lock:
            self._ensure_started()
            return ChainHead(self._stream, self._seq, self._hash)

    def _ensure_started(self) -> None:
        if not self._started:
            head = self._origin()
            self._started = True
            self._stream, self._seq, self._hash = head.stream, head.seq, head.hash

    def seal(self, events: Sequence[AuditEvent], render: bool = True) -> EventBatch:
        """``events`` with their integrity fields, and (``render``) their JSON lines. Events
        that already have integrity fields pass through."""
        sealed = new_batch()
        lines = sealed.lines if render else None
        if not render:
            sealed.lines = None
        with self._lock:
            self._ensure_started()
            self._seq, self._hash = seal_events(
                events, sealed, lines, self._stream, self._seq, self._hash
            )
        return sealed
