"""The per-stream hash chain: every event gets ``integrity = {stream, seq, prev, hash}``.

One stream per writing process. ``seq`` counts from 1 without gaps; ``prev`` is the previous
event's ``hash`` (:data:`~._canonical.GENESIS` for the first). With a durable archive the chain's
head is kept with the spool, so a restarted process continues its predecessor's stream instead
of starting a new one (see ``exporters.archive.ArchiveExporter.chain_head``).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from audit_middleware._event import AuditEvent
from audit_middleware.integrity._canonical import GENESIS, prune

__all__ = ["ChainHead", "EventChain", "new_stream_id"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9.-]")
_OPTIONS: Final = orjson.OPT_SORT_KEYS


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


_new = tuple.__new__  # AuditEvent(...) without _replace's keyword handling
_SCALARS: Final = frozenset({str, int, float, bool})


def _hash_input(event: AuditEvent) -> dict[str, Any]:
    """``prune(event.to_dict())`` without the integrity member, built directly (hot path)."""
    data: dict[str, Any] = {
        "schema_version": event.schema_version,
        "id": event.id,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "outcome": event.outcome,
        "actor": _present(event.actor.to_dict()),
    }
    if event.org_id is not None:
        data["org_id"] = event.org_id
    if event.target is not None:
        data["target"] = _present(event.target.to_dict())
    request = event.request
    if request is not None:
        part = _present(request._asdict())
        for name in ("query", "headers"):
            mapping = part.pop(name, None)
            if mapping:
                part[name] = prune(mapping)
                if not part[name]:
                    del part[name]
        data["request"] = part
    if event.client is not None:
        client = _present(event.client._asdict())
        if client:
            data["client"] = client
    if event.error is not None:
        data["error"] = {"type": event.error.type}
    if event.metadata:
        metadata = event.metadata
        if all(type(v) in _SCALARS for v in metadata.values()):
            data["metadata"] = dict(metadata)
        else:
            pruned = prune(metadata)
            if pruned:
                data["metadata"] = pruned
    if event.trace:
        data["trace"] = _present(event.trace)
    return data


def _present(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


class EventChain:
    """Give events their place in the stream, in the order :meth:`seal` sees them (thread-safe).

    ``origin`` is called once per process (again after ``fork``) for the head to continue from.
    """

    def __init__(self, origin: Callable[[], ChainHead] | None = None) -> None:
        self._origin = origin or (lambda: ChainHead(new_stream_id()))
        self._lock = threading.Lock()
        self._pid = -1
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
        if self._pid != os.getpid():
            head = self._origin()
            self._pid = os.getpid()
            self._stream, self._seq, self._hash = head.stream, head.seq, head.hash

    def seal(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        """``events`` with their integrity fields; events that already have them pass through."""
        sealed: list[AuditEvent] = []
        with self._lock:
            self._ensure_started()
            stream, seq, prev = self._stream, self._seq, self._hash
            for event in events:
                if event.integrity is not None:
                    sealed.append(event)
                    continue
                seq += 1
                data = _hash_input(event)
                data["integrity"] = {"stream": stream, "seq": seq, "prev": prev}
                digest = hashlib.sha256(orjson.dumps(data, option=_OPTIONS)).hexdigest()
                integrity = {"stream": stream, "seq": seq, "prev": prev, "hash": digest}
                sealed.append(_new(AuditEvent, (*event[:12], integrity, event[13])))
                prev = digest
            self._seq, self._hash = seq, prev
        return sealed
