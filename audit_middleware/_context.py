"""Per-request audit state (the handler-side API that adds to it is in ``_handler_api``).

The state lives in a context variable set by the middleware for the duration of one request,
so it follows the request into ``async`` handlers, sync handlers run in a thread pool
(Starlette/FastAPI copy the context) and WSGI handlers on the same thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from audit_middleware._event import Actor, AuditEvent, Target

if TYPE_CHECKING:
    from audit_middleware._auditor import Auditor

__all__ = ["RequestContext", "current_context", "org_was_set"]

_UNSET: Final[Any] = object()


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
    # Set when the request ends: what the builder reads of the scope, which is then let go.
    view: Any = None

    def __init__(
        self, auditor: Auditor, scope: Mapping[str, Any], method: str, started_ns: int
    ) -> None:
        self.auditor = auditor
        self.scope = scope
        self.method = method
        self.started_ns = started_ns


#: The request being handled, in a one-item list the middleware empties when the request ends.
#: A context copied during the request outlives it: uvicorn's keep-alive timer, created as the
#: response ends, holds a copy until the timer heap is purged, long after the next request.
#: Holding the request's state directly, such copies would keep every recent request's scope
#: alive, and the collector would run each time a batch of them is freed at once.
_current: Final[contextvars.ContextVar[list[RequestContext | None] | None]] = (
    contextvars.ContextVar("audit_middleware_request", default=None)
)


def current_context() -> RequestContext | None:
    """The audit state of the request being handled, or None outside a request."""
    slot = _current.get()
    return None if slot is None else slot[0]


def org_was_set(ctx: RequestContext) -> bool:
    """Whether handler code chose the org (possibly None) explicitly."""
    return ctx.org_id is not _UNSET
