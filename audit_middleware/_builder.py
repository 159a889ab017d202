"""Turn captured requests and explicit records into :class:`AuditEvent` objects.

Runs in the delivery worker (or inline under ``capture_audit_events``): everything that costs
CPU but needs no request-bound object happens here, off the request path: rule matching, value
sources, IP derivation, redaction, ids and timestamps.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
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
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


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
        self._allowed_headers = redactor.allowed_header_names
        # Requests repeat routes and clients: bounded caches of pure functions of their inputs.
        self._match = functools.lru_cache(maxsize=4096)(rules.match)
        self._client = functools.lru_cache(maxsize=4096)(self._client_uncached)
        self._headers = functools.lru_cache(maxsize=4096)(self._headers_uncached)

    def build(self, item: object) -> AuditEvent | None:
        """Build the event for a queued item, or None when policy says not to audit it."""
        if type(item) is RequestContext:
            return self._from_request(item)
        if isinstance(item, AuditEvent):
            return item
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
        match = self._match(view.method, view.route, view.path)
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
        params = {str(k): str(v) for k, v in view.path_params.items()} if view.path_params else {}
        if match.params:
            params.update(match.params)
        values = _Values(self, view, ctx, params) if rule is not None and rule.sources else None

        if org_was_set(ctx):
            org = ctx.org_id
        else:
            org = values.org(rule) if values is not None else None
            if org is None:
                org = self._org_from_params(params) or ctx.resolved_org
        target = ctx.target or (values.target(rule) if values is not None else None)
        if target is None and rule is not None and rule.target_type is not None:
            target = Target(type=rule.target_type)
        metadata: dict[str, Any] | None = None
        if values is not None and rule is not None and rule.metadata:
            metadata = {key: values.get(Source.parse(spec)) for key, spec in rule.metadata.items()}
        if ctx.metadata:
            metadata = {**(metadata or {}), **ctx.metadata}
        event_id = uuid7(ctx.started_ns)
        return AuditEvent(
            event_id,
            format_timestamp(ctx.started_ns),
            action,
            outcome,
            ctx.actor or ctx.resolved_actor or ANONYMOUS,
            None if org is None else self.redactor.scalar("org_id", org),
            target,
            *self._request_info(view, params, match.route, event_id, ctx, status),
            None if ctx.error_type is None else ErrorInfo(ctx.error_type[:256]),
            self.redactor.metadata(metadata) if metadata else _EMPTY,
        )

    def _org_from_params(self, params: Mapping[str, str]) -> str | None:
        if params:
            for name in self.config.org_params:
                if params.get(name):
                    return params[name]
        return None

    def _request_info(
        self,
        view: RequestView,
        params: Mapping[str, str],
        route: str | None,
        event_id: str,
        ctx: RequestContext | None,
        status: int | None,
    ) -> tuple[RequestInfo, ClientInfo]:
        """The request and client parts, from one pass over the headers."""
        user_agent, request_id, picked = _scan_headers(view.headers, self._allowed_headers)
        rid = None if request_id is None else request_id.decode("latin-1")
        if rid is None or not _REQUEST_ID.fullmatch(rid):
            rid = event_id
        path = view.path
        for param, param_value in params.items():
            if param_value and self.redactor.is_secret_key(param):
                path = path.replace(param_value, REDACTED)
        request = RequestInfo(
            rid,
            view.method if view.method in _METHODS else clean_text(view.method, 32),
            _clean_short(path, MAX_PATH) if len(path) <= 1024 else clean_text(path, MAX_PATH),
            None if route is None else _clean_short(route, MAX_PATH),
            status,
            None if ctx is None else round(ctx.duration_ns / 1e6, 3),
            None if ctx is None else ctx.completed,
            self.redactor.query(view.query) if view.query else _EMPTY,
            self._headers(tuple(picked)) if picked else _EMPTY,
        )
        if self.config.trusted_proxies.enabled:
            client = self._client_uncached(view.peer, user_agent, view.headers)
        elif user_agent is None or len(user_agent) <= 1024:
            client = self._client(view.peer, user_agent, ())
        else:
            client = self._client_uncached(view.peer, user_agent, ())
        return request, client

    def _headers_uncached(self, picked: tuple[tuple[bytes, bytes], ...]) -> Mapping[str, str]:
        return MappingProxyType(self.redactor.headers(picked))  # shared by events: read-only

    def _client_uncached(
        self, peer: str | None, user_agent: bytes | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> ClientInfo:
        trust = self.config.trusted_proxies
        peer_ip = resolve_client_ip(peer, (), _NO_TRUST)
        ip = resolve_client_ip(peer, headers, trust) if trust.enabled else peer_ip
        mode = self.config.ip_privacy
        if mode != "full":
            ip, peer_ip = anonymize_ip(ip, mode), anonymize_ip(peer_ip, mode)
        ua = None
        if user_agent is not None:
            ua = clean_text(user_agent, self.config.user_agent_max_length)
        return ClientInfo(ip, peer_ip, ua)

    # -- explicit records ---------------------------------------------------------------------

    def _from_record(self, rec: ExplicitRecord) -> AuditEvent:
        event_id = uuid7(rec.occurred_ns)
        request = client = None
        if rec.context is not None:
            view = asgi_view(rec.context.scope)
            params = {str(k): str(v) for k, v in view.path_params.items()}
            request, client = self._request_info(view, params, view.route, event_id, None, None)
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


@functools.lru_cache(maxsize=4096)
def _clean_short(text: str, max_length: int) -> str:
    """clean_text for short values that repeat (routes, paths, User-Agents)."""
    return clean_text(text, max_length)


def _scan_headers(
    headers: Sequence[tuple[bytes, bytes]], allowed: frozenset[bytes]
) -> tuple[bytes | None, bytes | None, list[tuple[bytes, bytes]]]:
    """One pass: the User-Agent, the X-Request-ID and the allow-listed headers."""
    user_agent = request_id = None
    picked: list[tuple[bytes, bytes]] = []
    try:
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value
            elif name == b"x-request-id":
                request_id = value
            if name in allowed:
                picked.append((name, value))
    except (TypeError, ValueError):  # malformed items from a buggy server: skip them
        return _scan_headers([h for h in headers if _is_header(h)], allowed)
    return (
        user_agent if type(user_agent) is bytes else None,
        request_id if type(request_id) is bytes else None,
        picked,
    )


def _is_header(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)


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
            return self.get(Source.parse(rule.org))
        return None

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
