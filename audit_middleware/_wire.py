"""Events as plain tuples in ``marshal`` frames, for the delivery process.

``marshal`` is the fastest serializer in the standard library, but it takes only exact built-in
types: each event becomes a tuple of strings, numbers, ``None``, tuples and dicts. The frame is
read only by a process forked from the writer, so both sides run the same code and Python.
Parts that repeat from event to event (actors, targets, clients, header sets) come back as
shared objects, as the builder made them, so the identity caches of the chain and the line
renderer keep working in the receiving process.

A ``record()`` made outside a request crosses unbuilt when it is already such a tuple
(:func:`plain_record`): the delivery process builds it, with the same builder it was forked
with, instead of this process building it and both converting the event. So does a request
whose captured facts are all such values (:func:`plain_request`): what the builder reads of
it (the request's view, the response's facts, the handler's hints, the resolvers' results)
crosses as a tuple, and the delivery process rebuilds the request's context from it and builds
its event there.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

import orjson

from audit_middleware._builder import new_target
from audit_middleware._context import RequestContext, org_was_set
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
from audit_middleware._views import RequestView, well_formed_headers

__all__ = ["Unpacker", "pack_events", "plain_record", "plain_request"]

_new_tuple: Final = tuple.__new__
_MARSHAL_VERSION: Final = 4  # shares repeated objects within a frame
_CACHE_SIZE: Final = 4096
_RECORD_SIZE: Final = 10  # an ExplicitRecord's fields; a flattened event has 14
_EVENT_SIZE: Final = 14
_REQUEST_SIZE: Final = 24  # a plain request's (see plain_request)
_REQUEST_TAG: Final = "request"
_ANONYMOUS_KEY: Final = (ANONYMOUS.id, ANONYMOUS.type, ANONYMOUS.email, ANONYMOUS.name)
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})

# Parent side: header sets the builder shares, flattened once.
_header_items = IdentityCache()


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


def plain_request(
    ctx: RequestContext, view: RequestView, drop: frozenset[bytes] = frozenset()
) -> tuple[Any, ...] | None:
    """What the builder reads of a request (its ``view``, the response's facts, the handler's
    hints, the resolvers' results) as one tuple of exact built-in values, which ``marshal``
    carries unchanged, so that the delivery process builds the very event this process would
    have built (:meth:`Unpacker.request`); None when some part is not such a value (a path
    parameter converted to a UUID, metadata holding objects, a status that is an enum...).
    Request headers named in ``drop`` (secrets the builder never reads) stay behind."""
    params: dict[Any, Any] | None = None
    if view.path_params:
        params = dict(view.path_params)
        for key, value in params.items():
            if type(key) is not str or type(value) not in _SCALARS:
                return None
    peer, route = view.peer, view.route
    if peer is not None and type(peer) is not str:
        return None
    if route is not None and type(route) is not str:
        return None
    headers = view.headers
    if not well_formed_headers(headers) or type(view.query) is not bytes:
        return None
    if drop:
        for name, _ in headers:
            if name in drop:
                headers = [item for item in headers if item[0] not in drop]
                break
    if type(ctx.status) is not int or type(ctx.duration_ns) is not int:
        return None
    error, action, resolved_org = ctx.error_type, ctx.action, ctx.resolved_org
    for text in (error, action, resolved_org):
        if text is not None and type(text) is not str:
            return None
    response_headers = ctx.response_headers
    if response_headers is not None and not well_formed_headers(response_headers):
        return None
    if not _chunks(ctx.response_body) or not _chunks(ctx.request_body):
        return None
    # Typed loosely: the compiled code must not check these types on the way, but here.
    trace: dict[Any, Any] | None = None if ctx.trace is None else dict(ctx.trace)
    if trace is not None:
        for key, value in trace.items():
            if type(key) is not str or type(value) is not str:
                return None
    keys = (_actor_key(ctx.actor), _actor_key(ctx.resolved_actor), _target_key(ctx.target))
    for key in keys:
        if key is not None and not _scalars(key):
            return None
    org: tuple[Any, ...] = ()
    if org_was_set(ctx):
        org = (ctx.org_id,)
        if type(ctx.org_id) not in _SCALARS:
            return None
    metadata: Any = ctx.metadata or None
    if metadata is not None:
        if type(metadata) is not dict:
            return None
        for key, value in metadata.items():
            if type(key) is not str or type(value) not in _SCALARS:
                return None
    return (
        view.method,
        view.path,
        view.query,
        headers,
        peer,
        params,
        route,
        ctx.started_ns,
        ctx.duration_ns,
        ctx.status,
        bool(ctx.completed),
        error,
        response_headers,
        ctx.response_body,
        ctx.request_body,
        trace,
        keys[0],
        keys[1],
        keys[2],
        org,
        action,
        metadata,
        resolved_org,
        _REQUEST_TAG,
    )


def _actor_key(actor: Actor | None) -> tuple[Any, ...] | None:
    return None if actor is None else (actor.id, actor.type, actor.email, actor.name)


def _target_key(target: Target | None) -> tuple[Any, ...] | None:
    return None if target is None else (target.type, target.id)


def _chunks(body: object) -> bool:
    """Whether a captured body is absent or a list of exact ``bytes``."""
    return body is None or (type(body) is list and all(type(c) is bytes for c in body))


def _scalars(items: tuple[Any, ...]) -> bool:
    if type(items) is not tuple:
        return False
    return all(type(item) in _SCALARS for item in items)


def pack_events(events: Sequence[tuple[Any, ...]]) -> bytes:
    """``events`` as one ``marshal`` frame of plain tuples (records passed by
    :func:`plain_record` and requests made by :func:`plain_request` go as they are)."""
    flats = [_flat(event) if isinstance(event, AuditEvent) else event for event in events]
    try:
        return marshal.dumps(flats, _MARSHAL_VERSION)
    except ValueError:  # a metadata value of a type marshal does not know
        return marshal.dumps(
            [flat if len(flat) != _EVENT_SIZE else _json_safe(flat) for flat in flats],
            _MARSHAL_VERSION,
        )


class Unpacker:
    """Turns frames back into events, sharing the parts that repeat (bounded caches).
    Unbuilt records need ``build_record`` (the builder's ``from_record``), unbuilt requests
    ``build_request`` (its ``build``)."""

    def __init__(self) -> None:
        self.build_record: Callable[[Any], AuditEvent] | None = None
        self.build_request: Callable[[RequestContext], AuditEvent | None] | None = None
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
        if len(flat) == _REQUEST_SIZE:
            if self.build_request is None:
                raise ValueError("an unbuilt request, and no builder to build it")
            built = self.build_request(self.request(flat))
            if built is None:
                raise ValueError("a request that crossed unbuilt made no event")
            return built
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

    def request(self, flat: tuple[Any, ...]) -> RequestContext:
        """The request context a :func:`plain_request` tuple stands for (view included)."""
        if flat[23] != _REQUEST_TAG:
            raise ValueError("not a plain request")
        # No auditor and no scope: the builder reads neither once the view is there.
        ctx = RequestContext(cast(Any, None), _EMPTY, flat[0], flat[7])
        ctx.view = _new_tuple(
            RequestView,
            (flat[0], flat[1], flat[2], flat[3], flat[4], flat[5] or _EMPTY, flat[6]),
        )
        ctx.duration_ns = flat[8]
        ctx.status = flat[9]
        ctx.completed = flat[10]
        ctx.error_type = flat[11]
        ctx.response_headers = flat[12]
        ctx.response_body = flat[13]
        ctx.request_body = flat[14]
        ctx.trace = flat[15]
        if flat[16] is not None:
            ctx.actor = self._actor(flat[16])
        if flat[17] is not None:
            ctx.resolved_actor = self._actor(flat[17])
        if flat[18] is not None:
            target = self._targets.get(flat[18])
            if target is None:
                target = _remember(self._targets, flat[18], new_target(*flat[18]))
            ctx.target = target
        if flat[19]:
            ctx.org_id = flat[19][0]
        ctx.action = flat[20]
        ctx.metadata = flat[21]
        ctx.resolved_org = flat[22]
        return ctx

    def _actor(self, key: tuple[Any, ...]) -> Actor:
        if key == _ANONYMOUS_KEY:
            return ANONYMOUS
        actor: Actor | None = self._actors.get(key)
        if actor is None:
            actor = _remember(self._actors, key, Actor(*key))
        return actor


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value
