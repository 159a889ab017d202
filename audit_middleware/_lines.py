"""Events as JSON lines, rendered once per event for every exporter that writes lines.

A line is ``orjson.dumps(event.to_dict()) + b"\\n"``: every schema field, in the schema's order,
absent values as ``null``. The dispatcher renders it (the hash chain right after hashing the
event) and the pipeline hands the lines to the exporters with the batch
(:class:`~audit_middleware._batch.EventBatch`),
so the log and the archive write them without serializing the event again. The parts of
events that the builder shares between requests (client, headers) are converted once and
remembered.

Appending the newline also copies orjson's output into an object of exact size: the bytes
orjson returns can sit in a much larger allocation (about 8 KiB), which adds up when lines
wait in a backlog.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from audit_middleware._event import ANONYMOUS, AuditEvent, RequestInfo

__all__ = ["IdentityCache", "event_line", "full_document"]

_CACHE_SIZE: Final = 4096
# Shared parts of documents (documents are serialized, never changed).
_ANONYMOUS_PART: Final = {"id": None, "type": "anonymous"}
_NOTHING: Final[dict[str, Any]] = {}
# Final aliases: compiled code reads these directly, not from the module's dict (see
# scripts/compile.py).
_ANONYMOUS: Final = ANONYMOUS
_dumps: Final = orjson.dumps


def event_line(event: AuditEvent) -> bytes:
    """``orjson.dumps(event.to_dict()) + b"\\n"``, faster."""
    data = full_document(event)
    integrity = event.integrity
    data["integrity"] = None if integrity is None else dict(integrity)
    # Not OPT_APPEND_NEWLINE: orjson's result keeps its 4 KiB buffer, and lines wait in
    # queues and batches by the thousand; the copy that adds the newline is compact.
    return _dumps(data) + b"\n"


def full_document(event: AuditEvent) -> dict[str, Any]:
    """``event.to_dict()`` without its last member, ``integrity`` (hot path: tested equal).
    Nested parts may be shared between documents: serialize them, do not change them."""
    actor = event.actor
    if actor is _ANONYMOUS:
        who: dict[str, Any] = _ANONYMOUS_PART
    else:
        who = {"id": actor.id, "type": actor.type}
        if actor.email is not None:
            who["email"] = actor.email
        if actor.name is not None:
            who["name"] = actor.name
    target = event.target
    request = event.request
    client = event.client
    part = None
    if client is not None:
        part = _full_clients.get(client)
        if part is None:
            part = _full_clients.put(client, client.to_dict())
    trace = event.trace
    metadata = event.metadata
    return {
        "schema_version": event.schema_version,
        "id": event.id,
        "occurred_at": event.occurred_at,
        "action": event.action,
        "outcome": event.outcome,
        "org_id": event.org_id,
        "actor": who,
        "target": None if target is None else {"type": target.type, "id": target.id},
        "request": None if request is None else _full_request(request),
        "client": part,
        "error": None if event.error is None else {"type": event.error.type},
        "metadata": _as_dict(metadata) if metadata else _NOTHING,
        "trace": None if trace is None else _as_dict(trace),
    }


def _as_dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` as a dict orjson serializes: itself when it is one (documents are only
    serialized), else a copy (e.g. of a read-only view)."""
    return mapping if type(mapping) is dict else dict(mapping)


def _full_request(request: RequestInfo) -> dict[str, Any]:
    headers = request.headers
    flat = _full_mappings.get(headers)  # the builder shares one mapping per header set
    if flat is None:
        flat = _full_mappings.put(headers, dict(headers))
    return {
        "id": request.id,
        "method": request.method,
        "route": request.route,
        "path": request.path,
        "status": request.status,
        "duration_ms": request.duration_ms,
        "completed": request.completed,
        "query": _as_dict(request.query) if request.query else _NOTHING,
        "headers": flat,
    }


class IdentityCache:
    """Conversions of event parts that repeat as the very same objects (the builder caches
    clients and header sets), remembered by identity. Each entry keeps its object alive, so an
    ``id`` cannot be reused while it is cached; past 4,096 entries the cache starts over."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, tuple[object, Any]] = {}

    def get(self, obj: object) -> Any:
        hit = self._entries.get(id(obj))
        return hit[1] if hit is not None and hit[0] is obj else None

    def put(self, obj: object, part: Any) -> Any:
        entries = self._entries
        if len(entries) >= _CACHE_SIZE:
            entries.clear()
        entries[id(obj)] = (obj, part)
        return part


# Shared parts are only ever serialized, never changed (under the GIL, a racing put at worst
# recomputes a part).
_full_clients: Final = IdentityCache()
_full_mappings: Final = IdentityCache()
