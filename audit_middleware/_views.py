"""Protocol glue for the worker: read a request's facts from an ASGI scope or WSGI environ."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from audit_middleware._event import Outcome

__all__ = [
    "RequestView",
    "asgi_view",
    "method_text",
    "outcome_for_status",
    "request_view",
    "route_template",
    "status_number",
    "wsgi_headers",
    "wsgi_view",
]


class RequestView(NamedTuple):
    """The protocol-neutral facts the event builder needs."""

    method: str
    path: str
    query: bytes
    headers: Sequence[tuple[bytes, bytes]]
    peer: str | None
    path_params: Mapping[Any, Any]  # keys are usually, but not always, str
    route: str | None


_new_view: Final = tuple.__new__
_REQUEST_VIEW: Final = RequestView  # Final: read directly by compiled code (scripts/compile.py)
_NO_PARAMS: Final[Mapping[str, Any]] = MappingProxyType({})


def route_template(scope: dict[str, Any]) -> str | None:
    """The framework's route template (Starlette/FastAPI ``scope["route"]``), mount prefix included.

    Starlette overwrites ``scope["route"]`` with the innermost route; the concrete part of
    ``root_path`` added by mounts is prepended (a mount path with parameters stays concrete).
    """
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    app_root = scope.get("app_root_path")
    root = scope.get("root_path", "")
    if isinstance(app_root, str) and isinstance(root, str) and root.startswith(app_root):
        template = root[len(app_root) :] + template
    return template


def asgi_view(scope: Mapping[str, Any]) -> RequestView:
    """Read an ASGI HTTP scope (after the app ran, so routing information is present).

    Members a buggy server got wrong are coerced to the types the spec gives them (bytes to
    text and back, malformed header items dropped) rather than failing the event: the builder
    and its compiled form rely on those types.
    """
    # Scopes are dicts (the spec says so): typed as one, each read is a direct dict lookup.
    fields: dict[str, Any] = scope if type(scope) is dict else dict(scope)
    client = fields.get("client")
    host = client[0] if client and (type(client) is tuple or type(client) is list) else None
    params = fields.get("path_params")
    method = fields.get("method", "GET")
    path = fields.get("path", "")
    query = fields.get("query_string")
    headers = fields.get("headers")
    return _new_view(  # RequestView(...) without the named tuple's Python-level __new__
        _REQUEST_VIEW,
        (
            method if type(method) is str else method_text(method),
            path if type(path) is str else _text(path, ""),
            query if type(query) is bytes else _query_bytes(query),
            headers if _well_formed(headers) else _header_pairs(headers),
            host if type(host) is str or isinstance(host, str) else None,
            params if type(params) is dict or isinstance(params, Mapping) else _NO_PARAMS,
            route_template(fields) if "route" in fields else None,
        ),
    )


def method_text(value: object) -> str:
    """A scope's ``method`` as text (a buggy server's bytes decoded; missing: ``GET``)."""
    return value if type(value) is str else _text(value, "GET")


def outcome_for_status(status: int, *, raised: bool = False) -> Outcome:
    """Map an HTTP status (and whether the app raised) to an outcome.

    ``success`` for 1xx-3xx, ``denied`` for 401/403, ``failure`` for other 4xx,
    ``error`` for 5xx, a missing status (0) or an exception.
    """
    if raised or status >= 500 or status < 100:
        return "error"
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    return "failure"


def status_number(value: object) -> int:
    """A response's ``status`` as an int (a buggy app's ``"201"`` or ``201.0``; unusable: 0,
    which the event records as 500)."""
    if type(value) is int:
        return value
    if not isinstance(value, (int, float, str, bytes)):
        return 0
    try:
        return int(value)
    except (ValueError, OverflowError):  # "OK", NaN, infinity
        return 0


def _text(value: object, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _query_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return b""


def _well_formed(headers: object) -> bool:
    """Whether ``headers`` is a list or tuple of ``(bytes, bytes)`` tuples (what servers send)."""
    if type(headers) is not list and type(headers) is not tuple:
        return False
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            return False
        if type(item[0]) is not bytes or type(item[1]) is not bytes:
            return False
    return True


def _header_pairs(headers: object) -> list[tuple[bytes, bytes]]:
    """The well-formed ``(name, value)`` pairs of a malformed header list (lists for tuples and
    ``str`` for bytes accepted, names lowercased, anything else dropped), up to an error in its
    iteration."""
    pairs: list[tuple[bytes, bytes]] = []
    if headers is None or isinstance(headers, (str, bytes, bytearray, Mapping)):
        return pairs
    with contextlib.suppress(Exception):  # not iterable, or an iterator failing part way
        for item in headers:  # type: ignore[attr-defined]
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                continue
            name, value = _header_bytes(item[0]), _header_bytes(item[1])
            if name is not None and value is not None:
                pairs.append((name.lower(), value))  # ASGI names are lowercase
    return pairs


def _header_bytes(value: object) -> bytes | None:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("latin-1", "replace")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return None


_FLASK_PARAM = re.compile(r"<(?:[A-Za-z_][A-Za-z0-9_]*(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")


def _angle_to_braces(template: str) -> str:
    """``/orgs/<int:org_id>`` (Flask) or ``orgs/<str:org_id>`` (Django) → ``/orgs/{org_id}``."""
    template = _FLASK_PARAM.sub(lambda m: "{" + m.group(1) + "}", template)
    return template if template.startswith("/") else "/" + template


def _wsgi_text(value: str) -> str:
    """PEP 3333 strings carry bytes as latin-1; recover the UTF-8 text."""
    try:
        return value.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return value


def wsgi_headers(environ: Mapping[Any, Any]) -> list[tuple[bytes, bytes]]:
    """The request headers of a WSGI environ in ASGI form: (lowercase name, value) bytes.
    A value that a broken server passed as bytes is taken as it is; other types are skipped."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if type(key) is not str:
            continue
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        if isinstance(value, str):
            raw = value.encode("latin-1", "replace")
        elif isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
        else:
            continue
        headers.append((name.lower().replace("_", "-").encode("latin-1", "replace"), raw))
    return headers


def _environ_text(value: object) -> str:
    """A PEP 3333 string member as the server should have passed it (bytes as latin-1)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return "" if value is None else str(value)


def _wsgi_route(
    environ: Mapping[str, Any], path_info: str, django: bool
) -> tuple[str | None, Mapping[str, Any]]:
    """Route template and path parameters from Flask (Werkzeug) or Django, when available."""
    if django:
        return _django_route(path_info)
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    if isinstance(rule, str):
        params = getattr(request, "view_args", None)
        return _angle_to_braces(rule), params if isinstance(params, Mapping) else {}
    return None, {}


def _django_route(path_info: str) -> tuple[str | None, Mapping[str, Any]]:
    try:
        from django.conf import settings
        from django.urls import Resolver404, resolve

        if not settings.configured:
            return None, {}
        try:
            match = resolve(path_info)
        except Resolver404:
            return None, {}
        route = getattr(match, "route", None)
        if not isinstance(route, str) or not route:
            return None, dict(match.kwargs)
        return _angle_to_braces(route), dict(match.kwargs)
    except Exception:
        return None, {}


def wsgi_view(environ: Mapping[str, Any], *, django: bool = False) -> RequestView:
    """Read a WSGI environ (after the app ran, so Flask's routing information is present);
    ``django``: the app is Django's handler, whose URL configuration names the route."""
    script = _wsgi_text(_environ_text(environ.get("SCRIPT_NAME")))
    path_info = _wsgi_text(_environ_text(environ.get("PATH_INFO")))
    route, params = _wsgi_route(environ, path_info, django)
    if route is not None and script:
        route = script.rstrip("/") + route
    peer = environ.get("REMOTE_ADDR")
    return RequestView(
        method_text(environ.get("REQUEST_METHOD")),
        script + path_info,
        _environ_text(environ.get("QUERY_STRING")).encode("latin-1", "replace"),
        wsgi_headers(environ),
        peer if isinstance(peer, str) and peer else None,
        params,
        route,
    )


def request_view(scope: Mapping[str, Any], protocol: str) -> RequestView:
    """The view of an ASGI scope (``asgi``) or a WSGI environ (``wsgi``, ``wsgi-django``)."""
    if protocol == "asgi":
        return asgi_view(scope)
    return wsgi_view(scope, django=protocol == "wsgi-django")
