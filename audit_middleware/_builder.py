"""Turn captured requests and explicit records into :class:`AuditEvent` objects.

Runs in the delivery worker (or inline under ``capture_audit_events``): everything that costs
CPU but needs no request-bound object happens here, off the request path: rule matching, value
sources, IP derivation, redaction, ids and timestamps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import orjson

from audit_middleware._bruteforce import BruteForceAlert
from audit_middleware._client_ip import ProxyTrust, anonymize_ip, resolve_client_ip
from audit_middleware._config import AuditConfig
from audit_middleware._context import RequestContext, org_was_set
from audit_middleware._event import (
    ANONYMOUS,
    SCHEMA_VERSION,
    Actor,
    ActorType,
    AuditEvent,
    ClientInfo,
    ErrorInfo,
    Outcome,
    RequestInfo,
    Target,
)
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware._jwt import JWTVerifier, bearer_token
from audit_middleware._rules import Rule, RuleMatch, RuleSet, Source
from audit_middleware._sanitize import NEVER_RECORDED_HEADERS, REDACTED, Redactor, clean_text
from audit_middleware._views import RequestView, outcome_for_status, request_view

__all__ = ["ActorKey", "EventBuilder", "ExplicitRecord", "actor_key", "new_target"]

MAX_PATH: Final = 2048
MAX_RESPONSE_BODY: Final = 64 * 1024
MAX_REQUEST_BODY: Final = 64 * 1024
_NO_TRUST: Final = ProxyTrust()
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_new_tuple: Final = tuple.__new__  # a named tuple without its Python-level __new__
# Final aliases: compiled code reads these directly, not from the module's dict (see
# scripts/compile.py).
_AUDIT_EVENT: Final = AuditEvent
_ANONYMOUS: Final = ANONYMOUS
_REQUEST_INFO: Final = RequestInfo
_TARGET: Final = Target
_new_object: Final = object.__new__
_set_attribute: Final = object.__setattr__
_MEMO_SIZE: Final = 4096
_K = TypeVar("_K")
_V = TypeVar("_V")


ActorKey = tuple[str | None, ActorType, str | None, str | None]
"""An actor as a queued record holds it: (id, type, email, name); None for ``ANONYMOUS``."""

ExplicitRecord = tuple[
    str,  # action
    Outcome,
    ActorKey | None,
    tuple[str, str | None] | None,  # target: (type, id)
    str | None,  # org_id
    tuple[Any, ...],  # metadata: its keys
    tuple[Any, ...],  # and their values
    int,  # occurred, ns since the epoch
    RequestContext | None,  # the request it was recorded in
    Mapping[str, str] | None,  # trace context
]
"""An event named by ``record(...)``, as queued: a plain tuple of text, numbers and tuples of
them (outside a request). The garbage collector stops tracking such tuples: the inner ones at
their first collection, the outer one at its second, before a backlog of records reaches the
oldest generation (tuples nested deeper would take a collection more each). A named tuple, an
``Actor``, a ``Target`` or a ``dict`` inside it would keep every queued record in every full
collection."""


def actor_key(actor: Actor) -> ActorKey | None:
    """The fields of ``actor`` as an :data:`ExplicitRecord` holds them."""
    return None if actor is _ANONYMOUS else (actor.id, actor.type, actor.email, actor.name)


def new_target(type_: str, id_: str | None) -> Target:
    """A ``Target`` from fields validated when it was first made (no ``__post_init__``)."""
    target: Target = _new_object(_TARGET)
    _set_attribute(target, "type", type_)
    _set_attribute(target, "id", id_)
    return target


class EventBuilder:
    """Builds events with one configuration; safe to call from any thread."""

    def __init__(
        self,
        config: AuditConfig,
        rules: RuleSet,
        redactor: Redactor,
        *,
        jwt: JWTVerifier | None = None,
        org_sources: Sequence[Source] = (),
    ) -> None:
        self.config = config
        self.rules = rules
        self.redactor = redactor
        self.jwt = jwt
        self.org_sources = tuple(org_sources)
        self._always_values = jwt is not None or bool(self.org_sources)
        self._allowed_headers = redactor.allowed_header_names
        self._trust_proxies = config.trusted_proxies.enabled
        # Requests repeat routes and clients: bounded caches of pure functions of their inputs.
        # Looked up inline (``known.get(key) or self._miss(key)``): cheaper than a
        # functools.lru_cache call in either build, and these keys need no recency order.
        self._matches: dict[tuple[str, str | None, str], RuleMatch] = {}
        self._clients: dict[tuple[str | None, bytes | None], ClientInfo] = {}
        self._header_sets: dict[tuple[tuple[bytes, bytes], ...], Mapping[str, str]] = {}
        self._org_values: dict[str, str] = {}
        self._actors: dict[ActorKey, Actor] = {}

    def build(self, item: object) -> AuditEvent | None:
        """Build the event for a queued item, or None when policy says not to audit it."""
        if type(item) is RequestContext:
            return self._from_request(item)
        if type(item) is tuple:
            return self.from_record(item)
        if isinstance(item, AuditEvent):
            return item
        raise TypeError(f"cannot build an audit event from {type(item).__name__}")

    # -- requests -----------------------------------------------------------------------------

    def _from_request(self, ctx: RequestContext) -> AuditEvent | None:
        if ctx.skip:
            return None
        view: RequestView | None = ctx.view
        if view is None:
            view = request_view(ctx.scope, ctx.protocol)
        status = ctx.status or 500
        outcome = outcome_for_status(status, raised=ctx.error_type is not None)
        key = (view.method, view.route, view.path)
        match = self._matches.get(key) or self._match_miss(key)
        rule = match.rule
        action = ctx.action
        if action is None and rule is not None:
            spec = rule.action
            if spec is None:
                return None  # the rule says: never audit this route
            action = spec if type(spec) is str else rule.action_for(status, outcome)
        if action is None:
            action = self.rules.default_action(view.method)
            if action is None:
                return None
        params = {str(k): str(v) for k, v in view.path_params.items()} if view.path_params else {}
        if match.params:
            params.update(match.params)
        values = None
        if self._always_values or (rule is not None and rule.sources):
            values = _Values(self, view, ctx, params)
        actor = ctx.actor or ctx.resolved_actor or (values and values.actor(rule)) or _ANONYMOUS
        if org_was_set(ctx):
            org = ctx.org_id
        else:
            org = values.org(rule) if values is not None else None
            if org is None:
                org = self._org_from_params(params) or ctx.resolved_org
            if org is None and values is not None:
                org = values.bearer_org()
        target = ctx.target or (values.target(rule) if values is not None else None)
        if target is None and rule is not None and rule.target_type is not None:
            target = Target(type=rule.target_type)
        metadata: dict[str, Any] | None = None
        if values is not None and rule is not None and rule.metadata:
            metadata = {key: values.get(Source.parse(spec)) for key, spec in rule.metadata.items()}
        if ctx.metadata:
            metadata = {**(metadata or {}), **ctx.metadata}
        event_id = uuid7(ctx.started_ns)
        request, client = self._request_info(view, params, match.route, event_id, ctx, status)
        return _new_tuple(  # AuditEvent(...) without the named tuple's Python-level __new__
            _AUDIT_EVENT,
            (
                event_id,
                format_timestamp(ctx.started_ns),
                action,
                outcome,
                actor,
                None if org is None else self._org(org),
                target,
                request,
                client,
                None if ctx.error_type is None else ErrorInfo(ctx.error_type[:256]),
                self.redactor.metadata(metadata) if metadata else _EMPTY,
                ctx.trace,
                None,
                SCHEMA_VERSION,
            ),
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
        request: RequestInfo = _new_tuple(_REQUEST_INFO, (
            rid,
            view.method if view.method in _METHODS else clean_text(view.method, 32),
            (_short_texts.get(path) or _short_text(path))
            if len(path) <= 1024
            else clean_text(path, MAX_PATH),
            None if route is None else _short_texts.get(route) or _short_text(route),
            status,
            None if ctx is None else (ctx.duration_ns + 500) // 1000 / 1000,  # ms, 3 decimals
            None if ctx is None else ctx.completed,
            self.redactor.query(view.query) if view.query else _EMPTY,
            self._header_set(tuple(picked)) if picked else _EMPTY,
        ))  # fmt: skip
        if self._trust_proxies:
            client = self._client_uncached(view.peer, user_agent, view.headers)
        elif user_agent is None or len(user_agent) <= 1024:
            peer_ua = (view.peer, user_agent)
            client = self._clients.get(peer_ua) or self._client_miss(peer_ua)
        else:
            client = self._client_uncached(view.peer, user_agent, ())
        return request, client

    def _org(self, org: object) -> str:
        """The org id, cleaned (org ids repeat: cached when short)."""
        text = org if type(org) is str else str(org)
        if len(text) > 256:
            return self._org_uncached(text)
        return self._org_values.get(text) or _remember(
            self._org_values, text, self._org_uncached(text)
        )

    def _org_uncached(self, org: str) -> str:
        return self.redactor.scalar("org_id", org)

    def _match_miss(self, key: tuple[str, str | None, str]) -> RuleMatch:
        return _remember(self._matches, key, self.rules.match(*key))

    def _client_miss(self, key: tuple[str | None, bytes | None]) -> ClientInfo:
        return _remember(self._clients, key, self._client_uncached(key[0], key[1], ()))

    def _header_set(self, picked: tuple[tuple[bytes, bytes], ...]) -> Mapping[str, str]:
        known = self._header_sets.get(picked)
        if known is None:  # shared by events: read-only
            known = MappingProxyType(self.redactor.headers(picked))
            _remember(self._header_sets, picked, known)
        return known

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

    # -- brute-force alerts --------------------------------------------------------------------

    def alert_event(self, alert: BruteForceAlert) -> AuditEvent:
        """``security.brute_force.suspected``: the IP or account that crossed the threshold."""
        now = time.time_ns()
        target = Target("ip", alert.key) if alert.dimension == "ip" else Target("user", alert.key)
        return AuditEvent(
            uuid7(now),
            format_timestamp(now),
            "security.brute_force.suspected",
            "success",
            ANONYMOUS,
            alert.org_id,
            target,
            None,
            ClientInfo(alert.ip, None, None),
            None,
            self.redactor.metadata(
                {
                    "dimension": alert.dimension,
                    "failures": alert.count,
                    "window_seconds": alert.window_seconds,
                    "first_failure_at": format_timestamp(alert.first_at_ns),
                    "last_failure_at": format_timestamp(alert.last_at_ns),
                    "ip": alert.ip,
                    "account": alert.account,
                    "failure_event_ids": list(alert.event_ids[-10:]),
                }
            ),
        )

    # -- explicit records ---------------------------------------------------------------------

    def from_record(self, rec: ExplicitRecord) -> AuditEvent:
        """The event of a queued ``record()``."""
        action, outcome, actor, target, org_id, keys, values, occurred_ns, context, trace = rec
        event_id = uuid7(occurred_ns)
        request = client = None
        if context is not None:
            view = context.view
            if view is None:
                view = request_view(context.scope, context.protocol)
            params = {str(k): str(v) for k, v in view.path_params.items()}
            request, client = self._request_info(view, params, view.route, event_id, None, None)
        return _new_tuple(  # AuditEvent(...) without the named tuple's Python-level __new__
            _AUDIT_EVENT,
            (
                event_id,
                format_timestamp(occurred_ns),
                action,
                outcome,
                _ANONYMOUS if actor is None else self._actors.get(actor) or self._actor(actor),
                None if org_id is None else self._org(org_id),
                None if target is None else new_target(target[0], target[1]),
                request,
                client,
                None,
                self.redactor.metadata_pairs(keys, values) if keys else _EMPTY,
                trace,
                None,
                SCHEMA_VERSION,
            ),
        )

    def _actor(self, key: ActorKey) -> Actor:
        return _remember(self._actors, key, Actor(*key))


def _remember(entries: dict[_K, _V], key: _K, value: _V) -> _V:
    """Store ``value`` under ``key`` in a memo of a pure function, emptied when full (its keys
    repeat: routes, clients, header sets, org ids, paths); return ``value``."""
    if len(entries) >= _MEMO_SIZE:
        entries.clear()
    entries[key] = value
    return value


# Paths and routes repeat; clean_text of one is a pure function of it.
_short_texts: Final[dict[str, str]] = {}


def _short_text(text: str) -> str:
    return _remember(_short_texts, text, clean_text(text, MAX_PATH))


def _scan_headers(
    headers: Sequence[tuple[bytes, bytes]], allowed: frozenset[bytes]
) -> tuple[bytes | None, bytes | None, list[tuple[bytes, bytes]]]:
    """The User-Agent, the X-Request-ID (the last of each) and the allow-listed headers (of a
    view: well-formed)."""
    user_agent = request_id = None
    picked = []
    for item in headers:
        name = item[0]
        if name in allowed:
            picked.append(item)
        if name == b"user-agent":
            user_agent = item[1]
        elif name == b"x-request-id":
            request_id = item[1]
    return user_agent, request_id, picked


def _header(view: RequestView, name: bytes) -> str | None:
    for key, value in view.headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Values:
    """Reads value sources for one request, parsing each body and token at most once."""

    def __init__(
        self, builder: EventBuilder, view: RequestView, ctx: RequestContext, params: dict[str, str]
    ) -> None:
        self._builder = builder
        self._view = view
        self._ctx = ctx
        self._params = params
        self._response: Any = ...
        self._request: Any = ...
        self._bearer: Any = ...

    def actor(self, rule: Rule | None) -> Actor | None:
        """From the rule's ``actor_id`` / ``actor_email`` sources, else the bearer token."""
        if rule is not None and rule.actor_id is not None:
            source = Source.parse(rule.actor_id)
            if source.kind == "response_jwt":
                claims = self._response_claims(source.name)
                found = (
                    None
                    if claims is None or self._builder.jwt is None
                    else (self._builder.jwt.actor(claims))
                )
            else:
                actor_id = self.get(source)
                found = None if actor_id is None else Actor(id=actor_id)
            if found is not None:
                return found
        if rule is not None and rule.actor_email is not None:
            email = self.get(Source.parse(rule.actor_email))
            if email is not None:
                return Actor(id=None, type="anonymous", email=email[:320])
        claims = self._bearer_claims()
        if claims is not None and self._builder.jwt is not None:
            return self._builder.jwt.actor(claims)
        return None

    def org(self, rule: Rule | None) -> str | None:
        """From the rule's ``org`` source, else the configured org sources in order."""
        if rule is not None and rule.org is not None:
            source = Source.parse(rule.org)
            jwt = self._builder.jwt
            if source.kind == "response_jwt":
                claims = self._response_claims(source.name)
                found = None if claims is None or jwt is None else jwt.org(claims)
            else:
                found = self.get(source)
            if found is not None:
                return found
        for source in self._builder.org_sources:
            found = self.get(source)
            if found is not None:
                return found
        return None

    def bearer_org(self) -> str | None:
        claims = self._bearer_claims()
        if claims is None or self._builder.jwt is None:
            return None
        return self._builder.jwt.org(claims)

    def target(self, rule: Rule | None) -> Target | None:
        if rule is None or rule.target_type is None:
            return None
        target_id = None if rule.target_id is None else self.get(Source.parse(rule.target_id))
        return Target(type=rule.target_type, id=target_id)

    def get(self, source: Source) -> str | None:
        raw = self._raw(source)
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        if raw is None or not isinstance(raw, (str, int, float)):
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
            wanted = name.encode("latin-1")
            for key, value in self._ctx.response_headers or ():
                key_b = key.encode("latin-1") if isinstance(key, str) else key
                if key_b.lower() == wanted:
                    return value.decode("latin-1") if isinstance(value, bytes) else value
            return None
        if kind == "jwt":
            claims = self._bearer_claims()
            return None if claims is None else claims.get(name)
        if kind == "response_jwt":
            claims = self._response_claims(name)
            jwt = self._builder.jwt
            return None if claims is None or jwt is None else claims.get(jwt.config.id_claim)
        document = self._request_fields() if kind == "body" else self._response_json()
        return _dig(document, name)

    def _response_json(self) -> Any:
        if self._response is ...:
            self._response = _parse_json(self._ctx.response_body, MAX_RESPONSE_BODY)
        return self._response

    def _request_fields(self) -> Any:
        """The request body as JSON, or as a form (first value of each field)."""
        if self._request is ...:
            self._request = None
            chunks = self._ctx.request_body
            content_type = (_header(self._view, b"content-type") or "").lower()
            if chunks and "json" in content_type:
                self._request = _parse_json(chunks, MAX_REQUEST_BODY)
            elif chunks and "x-www-form-urlencoded" in content_type:
                body = b"".join(chunks)
                if len(body) <= MAX_REQUEST_BODY:
                    pairs = parse_qsl(body.decode("latin-1"), max_num_fields=200)
                    self._request = dict(reversed(pairs))  # first value wins
        return self._request

    def _bearer_claims(self) -> Mapping[str, Any] | None:
        if self._bearer is ...:
            self._bearer = None
            jwt = self._builder.jwt
            token = None if jwt is None else bearer_token(self._view.headers)
            if jwt is not None and token is not None:
                self._bearer = jwt.claims(token, now=self._ctx.started_ns / 1e9)
        return self._bearer  # type: ignore[no-any-return]

    def _response_claims(self, name: str) -> Mapping[str, Any] | None:
        jwt = self._builder.jwt
        token = _dig(self._response_json(), name)
        if jwt is None or not isinstance(token, str):
            return None
        # Issued while the request ran: verify as of the response, not the request's start.
        ctx = self._ctx
        return jwt.claims(token, now=(ctx.started_ns + ctx.duration_ns) / 1e9)


def _parse_json(chunks: list[bytes] | None, limit: int) -> Any:
    body = b"".join(chunks or ())
    if not 0 < len(body) <= limit:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _dig(document: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        document = document.get(part) if isinstance(document, dict) else None
    return document
