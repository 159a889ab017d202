"""The data an event's chain hash covers, built directly from the event (hot path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from audit_middleware._event import ANONYMOUS, AuditEvent, RequestInfo
from audit_middleware._lines import IdentityCache
from audit_middleware.integrity._canonical import prune

__all__ = ["canonical_document"]

_SCALARS: Final = frozenset({str, int, float, bool})
# Parts the builder shares between events; only ever serialized, never changed.
_clients = IdentityCache()
_mappings = IdentityCache()
_ANONYMOUS: Final = {"type": "anonymous"}


def canonical_document(event: AuditEvent) -> dict[str, Any]:
    """``prune(event.to_dict())`` without ``integrity``, built directly (hot path;
    ``tests/test_integrity_chain.py`` checks it against the definition). Nested parts may be
    shared between documents: serialize them, do not change them."""
    actor = event.actor
    if actor is ANONYMOUS:
        who: dict[str, Any] = _ANONYMOUS
    else:
        who = {"type": actor.type}
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
        part = _clients.get(client)
        if part is None:
            part = _clients.put(client, prune(client.to_dict()))
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
    headers = request.headers
    if headers:
        flat = _mappings.get(headers)  # the builder shares one mapping per header set
        if flat is None:
            flat = _mappings.put(headers, _flat(headers))
        if flat:
            part["headers"] = flat
    return part


def _flat(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``prune(mapping)``, fast when every value is a plain scalar."""
    for value in mapping.values():
        if type(value) not in _SCALARS:
            pruned: dict[str, Any] = prune(mapping)
            return pruned
    return dict(mapping)
