"""The handler-side API: application code adds to the current request's event.

Plain Python, never compiled: it takes values from application code as they come (an ``int``
database key for an id is common) and turns them into the text the event schema has, where
compiled code would reject them with a ``TypeError`` inside the handler.
"""

from __future__ import annotations

from typing import Any

from audit_middleware._context import RequestContext, current_context
from audit_middleware._event import Actor, ActorType, Target
from audit_middleware._rules import is_valid_action
from audit_middleware._warn import warn_limited

__all__ = ["add_metadata", "set_action", "set_actor", "set_org", "set_target", "skip_audit"]


def _text(value: object) -> str | None:
    """``value`` as text for an event's id-like field; None stays None."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _context_or_warn(what: str) -> RequestContext | None:
    ctx = current_context()
    if ctx is None:
        warn_limited(
            f"outside:{what}",
            "audit_middleware.%s() called outside an audited request; ignored "
            "(use record() for events that no request describes)",
            what,
        )
    return ctx


def set_actor(
    id: str | int | None,
    *,
    type: ActorType = "user",
    email: str | None = None,
    name: str | None = None,
) -> bool:
    """Set who acted in the current request (an ``int`` id, such as a database key, is
    recorded as text). Returns False outside a request."""
    actor = Actor(id=_text(id), type=type, email=_text(email), name=_text(name))
    ctx = _context_or_warn("set_actor")
    if ctx is None:
        return False
    ctx.actor = actor
    return True


def set_target(type: str, id: str | int | None = None) -> bool:
    """Set the resource the current request acts upon (an ``int`` id is recorded as text).
    Returns False outside a request."""
    target = Target(type=str(type), id=_text(id))
    ctx = _context_or_warn("set_target")
    if ctx is None:
        return False
    ctx.target = target
    return True


def set_org(org_id: str | int | None) -> bool:
    """Set the organization (tenant) of the current request (an ``int`` id is recorded as
    text); None marks a global event."""
    ctx = _context_or_warn("set_org")
    if ctx is None:
        return False
    ctx.org_id = _text(org_id)
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
