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
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from audit_middleware._event import AuditEvent, RequestInfo
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
    """``prune(event.to_dict())`` without the integrity member, built directly (hot path;
    ``tests/test_integrity_chain.py`` checks it against the definition)."""
    actor = event.actor
    who: dict[str, Any] = {"type": actor.type}
    if actor.id is not None:
        who["id"] = actor.id
    if actor.email is not None:
        who["email"] = actor.email
    if actor.name is not None:
        who["name"] = actor.name
    data: dict[str, Any] = {
        "schema_version": event.schema_version,
        "id": event.id,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "outcome": event.outcome,
        "actor": who,
    }
    if event.org_id is not None:
        data["org_id"] = event.org_id
    target = event.target
    if target is not None:
        data["target"] = {"type": target.type} if target.id is None else {
            "type": target.type, "id": target.id
        }  # fmt: skip
    request = event.request
    if request is not None:
        data["request"] = _request(request)
    client = event.client
    if client is not None:
        part = {}
        if client.ip is not None:
            part["ip"] = client.ip
        if client.peer is not None:
            part["peer"] = client.peer
        if client.user_agent is not None:
            part["user_agent"] = client.user_agent
        if part:
            data["client"] = part
    if event.error is not None:
        data["error"] = {"type": event.error.type}
    metadata = event.metadata
    if metadata:
        pruned = _flat(metadata)
        if pruned:
            data["metadata"] = pruned
    if event.trace:
        data["trace"] = _flat(event.trace)
    return data


def _request(request: RequestInfo) -> dict[str, Any]:
    part: dict[str, Any] = {"id": request.id, "method": request.method, "path": request.path}
    if request.route is not None:
        part["route"] = request.route
    if request.status is not None:
        part["status"] = request.status
    if request.duration_ms is not None:
        part["duration_ms"] = request.duration_ms
    if request.completed is not None:
        part["completed"] = request.completed
    if request.query:
        query = _flat(request.query)
        if query:
            part["query"] = query
    if request.headers:
        headers = _flat(request.headers)
        if headers:
            part["headers"] = headers
    return part


def _flat(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``prune(mapping)``, fast when every value is a plain scalar."""
    for value in mapping.values():
        if type(value) not in _SCALARS:
            pruned: dict[str, Any] = prune(mapping)
            return pruned
    return dict(mapping)


_live_chains: weakref.WeakSet[EventChain] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent's thread at fork time would never be released in the child.
    for chain in list(_live_chains):
        chain._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class EventChain:
    """Give events their place in the stream, in the order :meth:`seal` sees them (thread-safe).

    ``origin`` is called once per process (again after ``fork``) for the head to continue from.
    """

    def __init__(self, origin: Callable[[], ChainHead] | None = None) -> None:
        self._origin = origin or (lambda: ChainHead(new_stream_id()))
        self._lock = threading.Lock()
        _live_chains.add(self)
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
