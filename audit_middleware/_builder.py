"""Turn captured requests and explicit records into :class:`AuditEvent` objects.

Runs in the delivery worker (or inline under ``capture_audit_events``): everything that costs
CPU but needs no request-bound object happens here, off the request path: rule matching, value
sources, IP derivation, redaction, ids and timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from audit_middleware._client_ip import ProxyTrust, anonymize_ip, resolve_client_ip
from audit_middleware._config import AuditConfig
from audit_middleware._context import RequestContext, org_was_set
from audit_middleware._event import (
    ANONYMOUS,
    Actor,
    AuditEvent,
    ClientInfo,
    ErrorInfo,
    Outcome,
    RequestInfo,
    Target,
    outcome_for_status,
)
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware._rules import Rule, RuleSet, Source
from audit_middleware._sanitize import NEVER_RECORDED_HEADERS, REDACTED, Redactor, clean_text
from audit_middleware._views import RequestView, asgi_view

__all__ = ["EventBuilder", "ExplicitRecord"]

MAX_PATH: Final = 2048
MAX_RESPONSE_BODY: Final = 64 * 1024
_NO_TRUST: Final = ProxyTrust()
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True, slots=True)
class ExplicitRecord:
    """An event named by ``record(...)``; ``org_id`` is ``...`` when not given."""

    action: str
    outcome: Outcome
    actor: Actor
    target: Target | None
    org_id: str | None
    metadata: Mapping[str, Any]
    occurred_ns: int
    context: RequestContext | None


class EventBuilder:
    """Builds events with one configuration; safe to call from any thread."""

    def __init__(self, config: AuditConfig, rules: RuleSet, redactor: Redactor) -> None:
        self.config = config
        self.rules = rules
        self.redactor = redactor

    def build(self, item: object) -> AuditEvent | None:
        """Build the event for a queued item, or None when policy says not to audit it."""
        if isinstance(item, AuditEvent):
            return item
        if isinstance(item, RequestContext):
            return self._from_request(item)
        if isinstance(item, ExplicitRecord):
            return self._from_record(item)
        raise TypeError(f"cannot build an audit event from {type(item).__name__}")

    # -- requests -----------------------------------------------------------------------------

    def _from_request(self, ctx: RequestContext) -> AuditEvent | None:
        if ctx.skip:
            return None
        view = asgi_view(ctx.scope)
        status = ctx.status or 500
        outcome = outcome_for_status(status, raised=ctx.error_type is not None)
        match = self.rules.match(view.method, view.route, view.path)
        rule = match.rule
        action = ctx.action
        if action is None and rule is not None:
            action = rule.action_for(status, outcome)
            if rule.action is None:
                return None  # the rule says: never audit this route
        if action is None:
            action = self.rules.default_action(view.method)
            if action is None:
                return None
        params = {str(k): str(v) for k, v in view.path_params.items()}
        params.update(match.params)
        values = _Values(self, view, ctx, params)

        org = ctx.org_id if org_was_set(ctx) else values.org(rule)
        target = ctx.target or values.target(rule)
        metadata: dict[str, Any] = {}
        if rule is not None:
            for key, spec in rule.metadata.items():
                metadata[key] = values.get(Source.parse(spec))
        if ctx.metadata:
            metadata.update(ctx.metadata)
        event_id = uuid7(ctx.started_ns)
        return AuditEvent(
            id=event_id,
            occurred_at=format_timestamp(ctx.started_ns),
            action=action,
            outcome=outcome,
            actor=ctx.actor or ctx.resolved_actor or ANONYMOUS,
            org_id=None if org is None else self.redactor.scalar("org_id", org),
            target=target,
            request=self._request_info(view, params, match.route, event_id, ctx, status),
            client=self._client_info(view),
            error=None if ctx.error_type is None else ErrorInfo(ctx.error_type[:256]),
            metadata=self.redactor.metadata(metadata) if metadata else {},
        )

    def _request_info(
        self,
        view: RequestView,
        params: Mapping[str, str],
        route: str | None,
        event_id: str,
        ctx: RequestContext | None,
        status: int | None,
    ) -> RequestInfo:
        path = view.path
        for name, value in params.items():
            if value and self.redactor.is_secret_key(name):
                path = path.replace(value, REDACTED)
        request_id = _header(view, b"x-request-id")
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = event_id
        return RequestInfo(
            id=request_id,
            method=clean_text(view.method, 32),
            path=clean_text(path, MAX_PATH),
            route=None if route is None else clean_text(route, MAX_PATH),
            status=status,
            duration_ms=None if ctx is None else round(ctx.duration_ns / 1e6, 3),
            completed=None if ctx is None else ctx.completed,
            query=self.redactor.query(view.query) if view.query else {},
            headers=self.redactor.headers(view.headers),
        )

    def _client_info(self, view: RequestView) -> ClientInfo:
        mode = self.config.ip_privacy
        peer = resolve_client_ip(view.peer, (), _NO_TRUST)
        ip = resolve_client_ip(view.peer, view.headers, self.config.trusted_proxies)
        ua = _header(view, b"user-agent")
        return ClientInfo(
            ip=anonymize_ip(ip, mode),
            peer=anonymize_ip(peer, mode),
            user_agent=None if ua is None else clean_text(ua, self.config.user_agent_max_length),
        )

    # -- explicit records ---------------------------------------------------------------------

    def _from_record(self, rec: ExplicitRecord) -> AuditEvent:
        event_id = uuid7(rec.occurred_ns)
        request = client = None
        if rec.context is not None:
            view = asgi_view(rec.context.scope)
            params = {str(k): str(v) for k, v in view.path_params.items()}
            request = self._request_info(view, params, view.route, event_id, None, None)
            client = self._client_info(view)
        return AuditEvent(
            id=event_id,
            occurred_at=format_timestamp(rec.occurred_ns),
            action=rec.action,
            outcome=rec.outcome,
            actor=rec.actor,
            org_id=None if rec.org_id is None else self.redactor.scalar("org_id", rec.org_id),
            target=rec.target,
            request=request,
            client=client,
            metadata=self.redactor.metadata(rec.metadata) if rec.metadata else {},
        )


def _header(view: RequestView, name: bytes) -> str | None:
    for key, value in view.headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Values:
    """Reads rule value sources for one request, parsing the response body at most once."""

    def __init__(
        self, builder: EventBuilder, view: RequestView, ctx: RequestContext, params: dict[str, str]
    ) -> None:
        self._builder = builder
        self._view = view
        self._ctx = ctx
        self._params = params
        self._body: Any = ...

    def org(self, rule: Rule | None) -> str | None:
        if rule is not None and rule.org is not None:
            found = self.get(Source.parse(rule.org))
            if found is not None:
                return found
        for name in self._builder.config.org_params:
            if self._params.get(name):
                return self._params[name]
        return self._ctx.resolved_org

    def target(self, rule: Rule | None) -> Target | None:
        if rule is None or rule.target_type is None:
            return None
        target_id = None if rule.target_id is None else self.get(Source.parse(rule.target_id))
        return Target(type=rule.target_type, id=target_id)

    def get(self, source: Source) -> str | None:
        raw = self._raw(source)
        if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            return None
        return self._builder.redactor.scalar(source.name, raw)

    def _raw(self, source: Source) -> object:
        kind, name = source.kind, source.name
        if kind == "path":
            return self._params.get(name)
        if kind == "query":
            return self._builder.redactor.query(self._view.query).get(name)
        if kind == "header":
            if name in NEVER_RECORDED_HEADERS:
                return None
            return _header(self._view, name.encode("latin-1"))
        if kind == "response_header":
            for key, value in self._ctx.response_headers or ():
                if key.lower() == name.encode("latin-1"):
                    return value.decode("latin-1")
            return None
        found: Any = self._response_json()
        for part in name.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        return found

    def _response_json(self) -> Any:
        if self._body is ...:
            chunks = self._ctx.response_body or []
            body = b"".join(chunks)
            try:
                self._body = orjson.loads(body) if 0 < len(body) <= MAX_RESPONSE_BODY else None
            except orjson.JSONDecodeError:
                self._body = None
        return self._body
