"""Built-in actor and org resolvers, and the resolver types.

A resolver receives the ASGI scope (or WSGI environ) after the application ran and returns an
:class:`~audit_middleware.Actor` or org id, or None to let the next resolver try. Resolvers run
on the request path, so keep them cheap; an exception in one is logged and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from audit_middleware._event import ACTOR_TYPES, Actor

__all__ = ["ActorResolver", "OrgResolver", "scope_user_actor", "scope_user_org"]

ActorResolver = Callable[[Mapping[str, Any]], Actor | None]
OrgResolver = Callable[[Mapping[str, Any]], str | None]


def _text_attr(obj: object, *names: str) -> str | None:
    for name in names:
        try:
            value = getattr(obj, name, None)
        except Exception:  # noqa: S112 - a property that raises means "not available"
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (str, int)):
            text = str(value)
            if text:
                return text
    return None


def scope_user_actor(scope: Mapping[str, Any]) -> Actor | None:
    """The authenticated ``scope["user"]`` (Starlette's AuthenticationMiddleware and the like).

    Reads ``identity`` / ``id`` / ``username`` for the id, ``email`` and ``display_name`` when
    present, and an optional ``actor_type`` attribute (``user``, ``api_key``, ``service``).
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    actor_id = _text_attr(user, "identity", "id", "user_id", "username")
    if actor_id is None:
        return None
    actor_type = getattr(user, "actor_type", "user")
    return Actor(
        id=actor_id,
        type=actor_type if actor_type in ACTOR_TYPES and actor_type != "anonymous" else "user",
        email=_text_attr(user, "email"),
        name=_text_attr(user, "display_name", "name"),
    )


def scope_user_org(scope: Mapping[str, Any]) -> str | None:
    """The ``org_id`` / ``organization_id`` / ``tenant_id`` attribute of ``scope["user"]``."""
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return _text_attr(user, "org_id", "organization_id", "tenant_id")
