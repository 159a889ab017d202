"""Protocol glue for the worker: read a request's facts from an ASGI scope or WSGI environ."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NamedTuple

__all__ = [
    "RequestView",
    "asgi_view",
    "request_view",
    "route_template",
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
    path_params: Mapping[str, Any]
    route: str | None


_new_view: Final = tuple.__new__
_NO_PARAMS: Final[Mapping[str, Any]] = MappingProxyType({})


def route_template(scope: Mapping[str, Any]) -> str | None:
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
    """Read an ASGI HTTP scope (after the app ran, so routing information is present)."""
    client = scope.get("client")
    peer = client[0] if client else None
    params = scope.get("path_params")
    method = scope.get("method", "GET")
    path = scope.get("path", "")
    return _new_view(  # RequestView(...) without the named tuple's Python-level __new__
        RequestView,
        (
            method if type(method) is str else str(method),
            path if type(path) is str else str(path),
            scope.get("query_string") or b"",
            scope.get("headers") or (),
            peer if type(peer) is str or isinstance(peer, str) else None,
            params if type(params) is dict or isinstance(params, Mapping) else _NO_PARAMS,
            route_template(scope) if "route" in scope else None,
        ),
    )


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


def wsgi_headers(environ: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """The request headers of a WSGI environ in ASGI form: (lowercase name, value) bytes."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        headers.append(
            (name.lower().replace("_", "-").encode("latin-1"), value.encode("latin-1", "replace"))
        )
    return headers


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
    script = _wsgi_text(str(environ.get("SCRIPT_NAME", "")))
    path_info = _wsgi_text(str(environ.get("PATH_INFO", "")))
    route, params = _wsgi_route(environ, path_info, django)
    if route is not None and script:
        route = script.rstrip("/") + route
    peer = environ.get("REMOTE_ADDR")
    return RequestView(
        str(environ.get("REQUEST_METHOD", "GET")),
        script + path_info,
        str(environ.get("QUERY_STRING", "")).encode("latin-1", "replace"),
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
