"""Action rules: matching by template and by path, outcome mappings, value sources, policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware, Rule
from audit_middleware._rules import RuleSet, Source, generic_action
from tests.conftest import MemoryAuditor

LOGIN = Rule(
    "POST",
    "/auth/login",
    {"success": "user.login.succeeded", "denied": "user.login.failed", "423": "user.login.locked"},
)


def _raw_app(
    status: int, body: bytes = b"{}", headers: list[tuple[bytes, bytes]] | None = None
) -> Any:
    """A raw ASGI app (no router, so no route template): rules must match by path."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize(
    ("status", "action", "outcome"),
    [
        pytest.param(200, "user.login.succeeded", "success", id="200"),
        pytest.param(401, "user.login.failed", "denied", id="401"),
        pytest.param(423, "user.login.locked", "failure", id="status-key-wins"),
        pytest.param(500, "http.post", "error", id="unmapped-outcome-falls-back"),
    ],
)
def test_outcome_mapping(
    make_auditor: Callable[..., MemoryAuditor], status: int, action: str, outcome: str
) -> None:
    auditor = make_auditor(rules=[LOGIN])
    TestClient(AuditMiddleware(_raw_app(status), auditor=auditor)).post("/auth/login")
    (event,) = auditor.wait_for(1)
    assert (event.action, event.outcome) == (action, outcome)
    assert event.request is not None
    assert event.request.route == "/auth/login"


def test_path_matching_extracts_params_for_target_and_org(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    rule = Rule(
        "DELETE",
        "/orgs/{org_id}/members/{user_id}",
        "org.member.removed",
        target_type="user",
        target_id="path.user_id",
    )
    auditor = make_auditor(rules=[rule])
    TestClient(AuditMiddleware(_raw_app(204, b""), auditor=auditor)).delete("/orgs/o1/members/u9")
    (event,) = auditor.wait_for(1)
    assert event.action == "org.member.removed"
    assert event.org_id == "o1"
    assert event.target is not None
    assert (event.target.type, event.target.id) == ("user", "u9")
    assert event.request is not None
    assert event.request.route == "/orgs/{org_id}/members/{user_id}"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("response.data.id", "k_1", id="response-json"),
        pytest.param("response_header.location", "/keys/k_1", id="response-header"),
        pytest.param("query.team", "blue", id="query"),
        pytest.param("header.x-tenant", "t_7", id="request-header"),
        pytest.param("response.missing", None, id="missing-field"),
        pytest.param("header.authorization", None, id="secret-header-never-read"),
    ],
)
def test_value_sources(
    make_auditor: Callable[..., MemoryAuditor], spec: str, expected: str | None
) -> None:
    rule = Rule("POST", "/keys", "org.api_key.created", target_type="api_key", target_id=spec)
    auditor = make_auditor(rules=[rule])
    app = _raw_app(201, b'{"data": {"id": "k_1"}}', [(b"location", b"/keys/k_1")])
    TestClient(AuditMiddleware(app, auditor=auditor)).post(
        "/keys?team=blue", headers={"x-tenant": "t_7", "authorization": "Bearer abc.def"}
    )
    (event,) = auditor.wait_for(1)
    assert event.target is not None
    assert event.target.id == expected


def test_response_body_over_the_cap_is_ignored(make_auditor: Callable[..., MemoryAuditor]) -> None:
    rule = Rule(
        "POST", "/keys", "org.api_key.created", target_type="api_key", target_id="response.id"
    )
    auditor = make_auditor(rules=[rule])
    big = b'{"id": "k_1", "pad": "' + b"x" * 70_000 + b'"}'
    TestClient(AuditMiddleware(_raw_app(201, big), auditor=auditor)).post("/keys")
    (event,) = auditor.wait_for(1)
    assert event.target is not None
    assert event.target.id is None


@pytest.mark.parametrize(
    ("policy", "method", "path", "audited"),
    [
        pytest.param("state_changing", "POST", "/anything", True, id="default-post"),
        pytest.param("state_changing", "DELETE", "/anything", True, id="default-delete"),
        pytest.param("state_changing", "GET", "/anything", False, id="default-get"),
        pytest.param("state_changing", "GET", "/health", False, id="default-health"),
        pytest.param("state_changing", "GET", "/audit-logs", True, id="rule-names-a-read"),
        pytest.param("state_changing", "POST", "/metrics", False, id="rule-skips-a-write"),
        pytest.param("all", "GET", "/anything", True, id="all-get"),
        pytest.param("none", "POST", "/anything", False, id="none-post"),
    ],
)
def test_unmatched_policy(
    make_auditor: Callable[..., MemoryAuditor], policy: str, method: str, path: str, audited: bool
) -> None:
    rules = [Rule("GET", "/audit-logs", "audit_log.viewed"), Rule("POST", "/metrics", None)]
    auditor = make_auditor(rules=rules, unmatched=policy)
    TestClient(AuditMiddleware(_raw_app(200), auditor=auditor)).request(method, path)
    auditor.record("test.marker")  # proves the pipeline ran past the request
    events = auditor.wait_for(1)
    assert len(events) == (2 if audited else 1)
    assert events[-1].action == "test.marker"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"method": "GET POST"}, "HTTP method", id="method"),
        pytest.param({"route": "orgs"}, "must start with '/'", id="route"),
        pytest.param({"action": "User.Login"}, "invalid action", id="action-case"),
        pytest.param({"action": {"teapot": "a.b"}}, "invalid action key", id="mapping-key"),
        pytest.param({"target_id": "path.x"}, "needs target_type", id="target-type"),
        pytest.param({"org": "cookie.org"}, "invalid value source", id="source-kind"),
        pytest.param({"route": "/x/{id:hex}"}, "unknown convertor", id="convertor"),
    ],
)
def test_invalid_rules_raise_at_construction(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"method": "POST", "route": "/x", "action": "x.created"}
    with pytest.raises(ValueError, match=message):
        Rule(**{**base, **kwargs})


def test_duplicate_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate rule"):
        RuleSet([Rule("POST", "/x/{a}", "x.one"), Rule("POST", "/x/{a:int}", "x.two")])


def test_template_lookup_ignores_convertors() -> None:
    rules = RuleSet([Rule("GET", "/items/{item_id:int}", "item.viewed")])
    match = rules.match("GET", "/items/{item_id}", "/items/3")
    assert match.rule is not None
    assert match.rule.action == "item.viewed"
    assert rules.match("GET", None, "/items/abc").rule is None  # int convertor on the path


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("POST", "http.post"),
        ("M-SEARCH", "http.m_search"),
        ("9X", "http.m9x"),
        ("", "http.unknown"),
    ],
)
def test_generic_action_is_always_valid(method: str, action: str) -> None:
    assert generic_action(method) == action


def test_source_parse() -> None:
    assert Source.parse("header.X-Tenant") == Source("header", "x-tenant")
    with pytest.raises(ValueError, match="invalid value source"):
        Source.parse("path")
