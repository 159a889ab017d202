"""Per-request audit state, and the handler-side API that adds to the current request's event.

The state lives in a context variable set by the middleware for the duration of one request,
so it follows the request into ``async`` handlers, sync handlers run in a thread pool
(Starlette/FastAPI copy the context) and WSGI handlers on the same thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from audit_middleware._event import Actor, ActorType, AuditEvent, Target
from audit_middleware._rules import is_valid_action
from audit_middleware._warn import warn_limited

if TYPE_CHECKING:
    from audit_middleware._auditor import Auditor

__all__ = [
    "RequestContext",
    "add_metadata",
    "current_context",
    "set_action",
    "set_actor",
    "set_org",
    "set_target",
    "skip_audit",
]

_UNSET: Any = object()


class RequestContext:
    """Everything captured about one request; filled on the request path, read by the worker.

    Defaults live on the class so that creating one per request sets only four attributes.
    """

    # Response facts, set by the protocol glue.
    duration_ns = 0
    status = 0
    completed = False
    disconnected = False
    error_type: str | None = None
    response_headers: Any = None
    response_body: list[bytes] | None = None
    request_body: list[bytes] | None = None
    trace: Mapping[str, str] | None = None
    strict_events: list[AuditEvent] | None = None  # built and made durable before the last byte
    # Hints from handler code (set_actor & co.); they win over rules and resolvers.
    actor: Actor | None = None
    target: Target | None = None
    org_id: Any = _UNSET
    action: str | None = None
    metadata: dict[str, Any] | None = None
    skip = False
    # Filled by resolvers when the request ends.
    resolved_actor: Actor | None = None
    resolved_org: str | None = None
    protocol = "asgi"

    def __init__(
        self, auditor: Auditor, scope: Mapping[str, Any], method: str, started_ns: int
    ) -> None:
        self.auditor = auditor
        self.scope = scope
        self.method = method
        self.started_ns = started_ns


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "audit_middleware_request", default=None
)


def current_context() -> RequestContext | None:
    """The audit state of the request being handled, or None outside a request."""
    return _current.get()


def _context_or_warn(what: str) -> RequestContext | None:
    ctx = _current.get()
    if ctx is None:
        warn_limited(
            f"outside:{what}",
            "audit_middleware.%s() called outside an audited request; ignored "
            "(use record() for events that no request describes)",
            what,
        )
    return ctx


def set_actor(
    id: str | None,
    *,
    type: ActorType = "user",
    email: str | None = None,
    name: str | None = None,
) -> bool:
    """Set who acted in the current request. Returns False outside a request."""
    actor = Actor(id=id, type=type, email=email, name=name)
    ctx = _context_or_warn("set_actor")
    if ctx is None:
        return False
    ctx.actor = actor
    return True


def set_target(type: str, id: str | None = None) -> bool:
    """Set the resource the current request acts upon. Returns False outside a request."""
    target = Target(type=type, id=id)
    ctx = _context_or_warn("set_target")
    if ctx is None:
        return False
    ctx.target = target
    return True


def set_org(org_id: str | None) -> bool:
    """Set the organization (tenant) of the current request; None marks a global event."""
    ctx = _context_or_warn("set_org")
    if ctx is None:
        return False
    ctx.org_id = org_id
    return True


def set_action(action: str) -> bool:
    """Name the action of the current request, overriding rules; audits it even if unmatched."""
    if not is_valid_action(action):
        raise ValueError(f"invalid action {action!r}: expected lowercase noun.verb[.qualifier]")
    ctx = _context_or_warn("set_action")
    if ctx is None:
        return False
    ctx.action = action
    return True


def add_metadata(**values: Any) -> bool:
    """Add context to the current request's event (redacted and size-capped on the way out)."""
    ctx = _context_or_warn("add_metadata")
    if ctx is None:
        return False
    if ctx.metadata is None:
        ctx.metadata = {}
    ctx.metadata.update(values)
    return True


def skip_audit() -> bool:
    """Record no event for the current request."""
    ctx = _context_or_warn("skip_audit")
    if ctx is None:
        return False
    ctx.skip = True
    return True


def org_was_set(ctx: RequestContext) -> bool:
    """Whether handler code chose the org (possibly None) explicitly."""
    return ctx.org_id is not _UNSET
