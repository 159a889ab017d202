"""Events as plain tuples in ``marshal`` frames, for the delivery process.

``marshal`` is the fastest serializer in the standard library, but it takes only exact built-in
types: each event becomes a tuple of strings, numbers, ``None``, tuples and dicts. The frame is
read only by a process forked from the writer, so both sides run the same code and Python.
Parts that repeat from event to event (actors, targets, clients, header sets) come back as
shared objects, as the builder made them, so the identity caches of the chain and the line
renderer keep working in the receiving process.

A ``record()`` made outside a request crosses unbuilt when it is already such a tuple
(:func:`plain_record`): the delivery process builds it, with the same builder it was forked
with, instead of this process building it and both converting the event.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from audit_middleware._builder import new_target
from audit_middleware._event import (
    _EMPTY,
    ANONYMOUS,
    Actor,
    AuditEvent,
    ClientInfo,
    ErrorInfo,
    RequestInfo,
    Target,
)
from audit_middleware._lines import IdentityCache

__all__ = ["Unpacker", "pack_events", "plain_record"]

_new_tuple: Final = tuple.__new__
_MARSHAL_VERSION: Final = 4  # shares repeated objects within a frame
_CACHE_SIZE: Final = 4096
_RECORD_SIZE: Final = 10  # an ExplicitRecord's fields; a flattened event has 14
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})

# Parent side: header sets the builder shares, flattened once.
_header_items: Final = IdentityCache()


def _plain(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A mapping as a dict ``marshal`` takes (None when empty); JSON-ready values."""
    if not mapping:
        return None
    if type(mapping) is dict:
        return mapping
    return dict(mapping)


def _exact(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A mapping as a dict ``marshal`` takes, None staying None (both render differently)."""
    if mapping is None or type(mapping) is dict:
        return mapping
    return dict(mapping)


def _flat(event: AuditEvent) -> tuple[Any, ...]:
    actor = event.actor
    target = event.target
    request = event.request
    client = event.client
    error = event.error
    if request is None:
        flat_request = None
    else:
        headers = request.headers
        items = None
        if headers:
            items = _header_items.get(headers)
            if items is None:
                items = _header_items.put(headers, tuple(headers.items()))
        flat_request = (
            request.id,
            request.method,
            request.path,
            request.route,
            request.status,
            request.duration_ms,
            request.completed,
            _plain(request.query),
            items,
        )
    return (
        event.id,
        event.occurred_at,
        event.action,
        event.outcome,
        None if actor is ANONYMOUS else (actor.id, actor.type, actor.email, actor.name),
        event.org_id,
        None if target is None else (target.type, target.id),
        flat_request,
        None if client is None else (client.ip, client.peer, client.user_agent),
        None if error is None else error.type,
        _plain(event.metadata),
        _exact(event.trace),
        _exact(event.integrity),
        event.schema_version,
    )


def _json_safe(flat: tuple[Any, ...]) -> tuple[Any, ...]:
    """``flat`` with its maps passed through JSON, for values ``marshal`` refuses (what the
    event's JSON line would show anyway)."""
    parts = list(flat)
    for index in (10, 11, 12):
        if parts[index] is not None:
            parts[index] = orjson.loads(orjson.dumps(parts[index], default=str))
    return tuple(parts)


def plain_record(record: tuple[Any, ...]) -> bool:
    """Whether a queued ``record()`` (an :data:`~audit_middleware._builder.ExplicitRecord`)
    can cross to the delivery process as it is: made outside a request, and nothing in it but
    exact strings, numbers, booleans and ``None`` (which ``marshal`` carries unchanged), so
    that the builder there makes the very event this process would have made."""
    if len(record) != _RECORD_SIZE or record[8] is not None:
        return False
    action, outcome, actor, target, org_id, keys, values, occurred_ns, _, trace = record
    if type(action) is not str or type(outcome) is not str or type(occurred_ns) is not int:
        return False
    if org_id is not None and type(org_id) is not str:
        return False
    if actor is not None and not _scalars(actor):
        return False
    if target is not None and not _scalars(target):
        return False
    if not all(type(key) is str for key in keys) or not _scalars(values):
        return False
    return trace is None or (
        type(trace) is dict and all(type(k) is str and type(v) is str for k, v in trace.items())
    )


def _scalars(items: tuple[Any, ...]) -> bool:
    if type(items) is not tuple:
        return False
    return all(type(item) in _SCALARS for item in items)


def pack_events(events: Sequence[tuple[Any, ...]]) -> bytes:
    """``events`` as one ``marshal`` frame of plain tuples (records passed by
    :func:`plain_record` go as they are)."""
    flats = [_flat(event) if isinstance(event, AuditEvent) else event for event in events]
    try:
        return marshal.dumps(flats, _MARSHAL_VERSION)
    except ValueError:  # a metadata value of a type marshal does not know
        return marshal.dumps(
            [flat if len(flat) == _RECORD_SIZE else _json_safe(flat) for flat in flats],
            _MARSHAL_VERSION,
        )


class Unpacker:
    """Turns frames back into events, sharing the parts that repeat (bounded caches).
    Unbuilt records need ``build_record`` (the builder's ``from_record``)."""

    def __init__(self) -> None:
        self.build_record: Callable[[Any], AuditEvent] | None = None
        self._actors: dict[tuple[Any, ...], Actor] = {}
        self._targets: dict[tuple[Any, ...], Target] = {}
        self._clients: dict[tuple[Any, ...], ClientInfo] = {}
        self._headers: dict[tuple[Any, ...], Mapping[str, str]] = {}
        self._errors: dict[str, ErrorInfo] = {}

    def frame(self, payload: bytes | bytearray | memoryview) -> list[tuple[Any, ...]]:
        """The plain tuples of a frame; :meth:`event` makes each an event."""
        # Frames come only from the process this one was forked from, over a socket pair.
        flats: list[tuple[Any, ...]] = marshal.loads(payload)  # noqa: S302
        return flats

    def events(self, payload: bytes | bytearray | memoryview) -> list[AuditEvent]:
        """The events of a frame (a malformed tuple raises: use :meth:`frame` and
        :meth:`event` to take them one at a time)."""
        return [self.event(flat) for flat in self.frame(payload)]

    def event(self, flat: object) -> AuditEvent:
        """The event a plain tuple stands for."""
        assert type(flat) is tuple
        if len(flat) == _RECORD_SIZE:
            if self.build_record is None:
                raise ValueError("an unbuilt record, and no builder to build it")
            return self.build_record(flat)
        actor_key = flat[4]
        if actor_key is None:
            actor = ANONYMOUS
        else:
            actor = self._actors.get(actor_key)  # type: ignore[assignment]
            if actor is None:
                actor = _remember(self._actors, actor_key, Actor(*actor_key))
        target = None
        if flat[6] is not None:
            target = self._targets.get(flat[6])
            if target is None:
                target = _remember(self._targets, flat[6], new_target(*flat[6]))
        request = None
        flat_request = flat[7]
        if flat_request is not None:
            query = flat_request[7]
            items = flat_request[8]
            headers: Mapping[str, str] = _EMPTY
            if items is not None:
                found = self._headers.get(items)
                headers = found if found is not None else _remember(
                    self._headers, items, dict(items)
                )  # fmt: skip
            request = _new_tuple(
                RequestInfo,
                (
                    flat_request[0],
                    flat_request[1],
                    flat_request[2],
                    flat_request[3],
                    flat_request[4],
                    flat_request[5],
                    flat_request[6],
                    _EMPTY if query is None else query,
                    headers,
                ),
            )
        client = None
        if flat[8] is not None:
            client = self._clients.get(flat[8])
            if client is None:
                client = _remember(self._clients, flat[8], _new_tuple(ClientInfo, flat[8]))
        error = None
        if flat[9] is not None:
            error = self._errors.get(flat[9])
            if error is None:
                error = _remember(self._errors, flat[9], ErrorInfo(flat[9]))
        metadata = flat[10]
        return _new_tuple(
            AuditEvent,
            (
                flat[0],
                flat[1],
                flat[2],
                flat[3],
                actor,
                flat[5],
                target,
                request,
                client,
                error,
                _EMPTY if metadata is None else metadata,
                flat[11],
                flat[12],
                flat[13],
            ),
        )


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value
