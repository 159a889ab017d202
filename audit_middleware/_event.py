"""The audit event (schema v1): an immutable record of who did what, when and where."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from audit_middleware._views import outcome_for_status  # compiled with the builder that calls it

__all__ = [
    "ACTOR_TYPES",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "Actor",
    "ActorType",
    "AuditEvent",
    "ClientInfo",
    "ErrorInfo",
    "Outcome",
    "RequestInfo",
    "Target",
    "outcome_for_status",
]

SCHEMA_VERSION: Final = 1
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})

Outcome = Literal["success", "denied", "failure", "error"]
ActorType = Literal["user", "api_key", "service", "anonymous"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("success", "denied", "failure", "error")
ACTOR_TYPES: Final[tuple[ActorType, ...]] = ("user", "api_key", "service", "anonymous")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted. ``id`` is None only for anonymous actors. Values that are not text (an
    ``int`` id, say) are converted to text."""

    id: str | None
    type: ActorType = "user"
    email: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        id_, email, name = self.id, self.email, self.name
        if (
            (id_ is not None and type(id_) is not str)
            or (email is not None and type(email) is not str)
            or (name is not None and type(name) is not str)
        ):  # an int database key, say: recorded as text
            for field, value in (("id", id_), ("email", email), ("name", name)):
                if value is not None and type(value) is not str:
                    object.__setattr__(self, field, str(value))
        if self.type not in ACTOR_TYPES:
            raise ValueError(f"actor type must be one of {ACTOR_TYPES}, got {self.type!r}")
        if self.id is None and self.type != "anonymous":
            raise ValueError("an actor other than 'anonymous' needs an id")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; optional fields are omitted when unset."""
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.email is not None:
            out["email"] = self.email
        if self.name is not None:
            out["name"] = self.name
        return out


ANONYMOUS: Final = Actor(id=None, type="anonymous")


@dataclass(frozen=True, slots=True)
class Target:
    """The resource acted upon, e.g. ``Target("api_key", "key_123")`` (an ``int`` id is
    converted to text)."""

    type: str
    id: str | None = None

    def __post_init__(self) -> None:
        if type(self.type) is not str:
            object.__setattr__(self, "type", str(self.type))
        if self.id is not None and type(self.id) is not str:  # an int key: recorded as text
            object.__setattr__(self, "id", str(self.id))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"type": self.type, "id": self.id}


class RequestInfo(NamedTuple):
    """The HTTP request behind the event; ``status`` is None for events recorded mid-request."""

    id: str
    method: str
    path: str
    route: str | None = None
    status: int | None = None
    duration_ms: float | None = None
    completed: bool | None = None
    query: Mapping[str, Any] = _EMPTY
    headers: Mapping[str, str] = _EMPTY

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "completed": self.completed,
            "query": dict(self.query),
            "headers": dict(self.headers),
        }


class ClientInfo(NamedTuple):
    """Where the request came from: derived client IP, socket peer, User-Agent."""

    ip: str | None
    peer: str | None = None
    user_agent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ip": self.ip, "peer": self.peer, "user_agent": self.user_agent}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an event has outcome ``error``: the exception class name, never its message."""

    type: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"type": self.type}


class AuditEvent(NamedTuple):
    """One audit record, immutable. Field meanings are in ``schema/audit-event.v1.json``.

    A named tuple rather than a frozen dataclass: events are built for every audited request
    and a tuple is several times cheaper to construct; ``event._replace(...)`` makes a copy.
    """

    id: str
    occurred_at: str
    action: str
    outcome: Outcome
    actor: Actor
    org_id: str | None = None
    target: Target | None = None
    request: RequestInfo | None = None
    client: ClientInfo | None = None
    error: ErrorInfo | None = None
    metadata: Mapping[str, Any] = _EMPTY
    trace: Mapping[str, str] | None = None
    integrity: Mapping[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-ready data, exactly as the JSON Schema describes it."""
        return {
            "schema_version": self.schema_version,
            "id": self.id,
            "occurred_at": self.occurred_at,
            "action": self.action,
            "outcome": self.outcome,
            "org_id": self.org_id,
            "actor": self.actor.to_dict(),
            "target": None if self.target is None else self.target.to_dict(),
            "request": None if self.request is None else self.request.to_dict(),
            "client": None if self.client is None else self.client.to_dict(),
            "error": None if self.error is None else self.error.to_dict(),
            "metadata": dict(self.metadata),
            "trace": None if self.trace is None else dict(self.trace),
            "integrity": None if self.integrity is None else dict(self.integrity),
        }
