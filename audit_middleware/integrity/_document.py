"""The bytes an event's chain hash covers, built directly from the event (hot path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from audit_middleware._event import ANONYMOUS, AuditEvent, RequestInfo
from audit_middleware._lines import IdentityCache
from audit_middleware.integrity._canonical import prune

__all__ = ["canonical_json"]

_SCALARS: Final = frozenset({str, int, float, bool})
# Parts the builder shares between events; only ever serialized, never changed.
_clients: Final = IdentityCache()
_mappings: Final = IdentityCache()
_ANONYMOUS_PART: Final = {"type": "anonymous"}
# Final aliases: compiled code reads these directly, not from the module's dict (see
# scripts/compile.py).
_ANONYMOUS: Final = ANONYMOUS
_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


def canonical_json(event: AuditEvent, integrity: dict[str, Any]) -> bytes:
    """The canonical JSON of ``event`` with ``integrity`` (``{"prev", "seq", "stream"}``):
    ``orjson.dumps(prune(...), option=OPT_SORT_KEYS)`` of its schema fields, built directly
    (hot path; ``tests/test_integrity_chain.py`` checks it against the definition).

    Members are inserted in sorted order, and the parts the builder shares are cached sorted,
    so orjson needs to sort only when the event carries maps of the caller's (metadata, query,
    trace): sorting costs about as much as a third of the serialization.
    """
    callers_maps = False
    actor = event.actor
    if actor is _ANONYMOUS:
        who: dict[str, Any] = _ANONYMOUS_PART
    else:
        who = {}
        if actor.email is not None:
            who["email"] = actor.email
        if actor.id is not None:
            who["id"] = actor.id
        if actor.name is not None:
            who["name"] = actor.name
        who["type"] = actor.type
    data: dict[str, Any] = {"action": event.action, "actor": who}
    client = event.client
    if client is not None:
        part = _clients.get(client)
        if part is None:
            part = _clients.put(client, _sorted(prune(client.to_dict())))
        if part:
            data["client"] = part
    if event.error is not None:
        data["error"] = {"type": event.error.type}
    data["id"] = event.id
    data["integrity"] = integrity
    metadata = event.metadata
    if metadata:
        pruned = _flat(metadata)
        if pruned:
            data["metadata"] = pruned
            callers_maps = True
    data["occurred_at"] = event.occurred_at
    if event.org_id is not None:
        data["org_id"] = event.org_id
    data["outcome"] = event.outcome
    request = event.request
    if request is not None:
        data["request"] = _request(request)
        callers_maps = callers_maps or bool(request.query)
    data["schema_version"] = event.schema_version
    target = event.target
    if target is not None:
        data["target"] = {"type": target.type} if target.id is None else {
            "id": target.id, "type": target.type
        }  # fmt: skip
    if event.trace:
        data["trace"] = _flat(event.trace)
        callers_maps = True
    return _dumps(data, option=_SORT_KEYS if callers_maps else None)


def _request(request: RequestInfo) -> dict[str, Any]:
    """The ``request`` member, its keys in sorted order."""
    part: dict[str, Any] = {}
    if request.completed is not None:
        part["completed"] = request.completed
    if request.duration_ms is not None:
        part["duration_ms"] = request.duration_ms
    headers = request.headers
    if headers:
        flat = _mappings.get(headers)  # the builder shares one mapping per header set
        if flat is None:
            flat = _mappings.put(headers, _sorted(_flat(headers)))
        if flat:
            part["headers"] = flat
    part["id"] = request.id
    part["method"] = request.method
    part["path"] = request.path
    if request.query:
        query = _flat(request.query)
        if query:
            part["query"] = query
    if request.route is not None:
        part["route"] = request.route
    if request.status is not None:
        part["status"] = request.status
    return part


def _sorted(mapping: dict[str, Any]) -> dict[str, Any]:
    """``mapping`` with its keys in sorted order (nested maps as they are)."""
    return dict(sorted(mapping.items()))


def _flat(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``prune(mapping)``, fast when every value is a plain scalar (then ``mapping`` itself
    when it is a dict: the result is only serialized)."""
    for value in mapping.values():
        if type(value) not in _SCALARS:
            pruned: dict[str, Any] = prune(mapping)
            return pruned
    return mapping if type(mapping) is dict else dict(mapping)
