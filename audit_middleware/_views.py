"""Protocol glue for the worker: read a request's facts from an ASGI scope."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["RequestView", "asgi_view", "route_template"]


class RequestView(NamedTuple):
    """The protocol-neutral facts the event builder needs."""

    method: str
    path: str
    query: bytes
    headers: Sequence[tuple[bytes, bytes]]
    peer: str | None
    path_params: Mapping[str, Any]
    route: str | None


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
    return RequestView(
        str(scope.get("method", "GET")),
        str(scope.get("path", "")),
        scope.get("query_string") or b"",
        scope.get("headers") or (),
        peer if isinstance(peer, str) else None,
        params if isinstance(params, Mapping) else {},
        route_template(scope) if "route" in scope else None,
    )
