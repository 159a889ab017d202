"""Wrapping an app that knows nothing of us: rules file, JWT actors, brute-force signal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditConfigError, AuditMiddleware, RulesFileError
from tests.conftest import MemoryAuditor

SECRET = "s" * 32  # HS256 needs at least 32 bytes

RULES = """
[jwt]
algorithms = ["HS256"]
key_env = "APP_SECRET"
audience = "api"

[[rule]]
method = "POST"
route = "/login"
action = { success = "user.login.succeeded", "4xx" = "user.login.failed" }
target_type = "user"
target_id = "body.email"
actor_id = "response_jwt.access_token"
org = "response_jwt.access_token"

[[rule]]
method = "POST"
route = "/orgs/{org_id}/reports"
action = "org.report.created"
target_type = "report"
target_id = "response.id"
"""


def _token(sub: str = "u_1", *, exp: float | None = None, key: str = SECRET, **claims: Any) -> str:
    payload = {"sub": sub, "aud": "api", "exp": exp or time.time() + 3600, **claims}
    return jwt.encode(payload, key, algorithm="HS256")


def _app() -> Starlette:
    async def login(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("password") != "right":
            return JSONResponse({"error": "bad credentials"}, status_code=401)
        token = _token("u_" + body["email"].split("@")[0], email=body["email"], org_id="org_9")
        return JSONResponse({"access_token": token})

    async def report(request: Request) -> JSONResponse:
        return JSONResponse({"id": "rep_1"}, status_code=201)

    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/orgs/{org_id}/reports", report, methods=["POST"]),
        ]
    )


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit-rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return path


def test_rules_file_from_the_environment_with_jwt_actors(
    make_auditor: Callable[..., MemoryAuditor], rules_path: Path
) -> None:
    auditor = make_auditor(environ={"AUDIT_LOG_RULES": str(rules_path), "APP_SECRET": SECRET})
    client = TestClient(AuditMiddleware(_app(), auditor=auditor))
    client.post("/login", json={"email": "eve@x.test", "password": "wrong"})
    client.post("/login", json={"email": "bob@x.test", "password": "right"})
    good = {"authorization": f"Bearer {_token('u_bob', email='bob@x.test')}"}
    client.post("/orgs/org_1/reports", headers=good)
    forged = {"authorization": f"Bearer {_token('u_admin', key='x' * 32)}"}
    client.post("/orgs/org_1/reports", headers=forged)
    expired = {"authorization": f"Bearer {_token('u_admin', exp=time.time() - 10)}"}
    client.post("/orgs/org_1/reports", headers=expired)
    failed, succeeded, report, forged_event, expired_event = auditor.wait_for(5)

    assert (failed.action, failed.actor.type, failed.org_id) == (
        "user.login.failed",
        "anonymous",
        None,
    )
    assert failed.target is not None
    assert failed.target.id == "eve@x.test"
    assert succeeded.action == "user.login.succeeded"
    assert (succeeded.actor.id, succeeded.actor.email) == ("u_bob", "bob@x.test")
    assert succeeded.org_id == "org_9"
    assert report.actor.id == "u_bob"
    assert report.org_id == "org_1"
    assert report.target is not None
    assert report.target.id == "rep_1"
    for event in (forged_event, expired_event):  # never an actor from an unverified token
        assert event.actor.type == "anonymous"
        assert event.actor.id is None
    for event in auditor.memory.events:
        assert "right" not in str(event.metadata)
        assert "eyJ" not in str(event.to_dict())


def test_invalid_rules_file_fails_at_start_up_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nmethod = "POST"\nroute = "/x"\naction = "Not.Valid"\n')
    with pytest.raises(RulesFileError) as info:
        AuditMiddleware(_app(), environ={"AUDIT_LOG_RULES": str(path)}, exporters=[])
    assert str(info.value).startswith(f"{path}:1: ")
    assert "invalid action 'Not.Valid'" in str(info.value)


def test_missing_jwt_key_variable_is_reported(rules_path: Path) -> None:
    with pytest.raises(AuditConfigError, match="key_env names APP_SECRET"):
        AuditMiddleware(_app(), environ={"AUDIT_LOG_RULES": str(rules_path)}, exporters=[])


def test_jwt_from_environment_variables(make_auditor: Callable[..., MemoryAuditor]) -> None:
    env = {
        "AUDIT_LOG_JWT_KEY": SECRET,
        "AUDIT_LOG_JWT_ALGORITHMS": "HS256",
        "AUDIT_LOG_JWT_AUDIENCE": "api",
    }
    auditor = make_auditor(environ=env)
    client = TestClient(AuditMiddleware(_app(), auditor=auditor))
    client.post(
        "/orgs/org_2/reports", headers={"authorization": f"Bearer {_token('u_7', org_id='o')}"}
    )
    (event,) = auditor.wait_for(1)
    assert event.actor.id == "u_7"
    assert event.org_id == "org_2"  # the path parameter wins over the token's org claim


def test_jwt_none_algorithm_is_refused_in_the_environment() -> None:
    env = {"AUDIT_LOG_JWT_KEY": SECRET, "AUDIT_LOG_JWT_ALGORITHMS": "none"}
    with pytest.raises(AuditConfigError, match="'none' algorithm"):
        AuditMiddleware(_app(), environ=env, exporters=[])


def test_weak_jwt_key_is_refused_at_start_up() -> None:
    env = {"AUDIT_LOG_JWT_KEY": "short", "AUDIT_LOG_JWT_ALGORITHMS": "HS256"}
    with pytest.raises(AuditConfigError, match="JWT settings"):
        AuditMiddleware(_app(), environ=env, exporters=[])


def test_failed_login_burst_raises_one_brute_force_signal(
    make_auditor: Callable[..., MemoryAuditor], rules_path: Path
) -> None:
    auditor = make_auditor(
        environ={"AUDIT_LOG_RULES": str(rules_path), "APP_SECRET": SECRET},
        brute_force_threshold=5,
        brute_force_window=60,
    )
    client = TestClient(AuditMiddleware(_app(), auditor=auditor), client=("198.51.100.23", 999))
    for _ in range(8):
        client.post("/login", json={"email": "victim@x.test", "password": "guess"})
    events = auditor.wait_for(9)
    alerts = [e for e in events if e.action == "security.brute_force.suspected"]
    assert len(alerts) == 2  # one per dimension (the IP and the account), once per burst
    by_target = {(a.target.type, a.target.id): a for a in alerts if a.target is not None}
    account = by_target[("user", "victim@x.test")]
    assert account.metadata["failures"] == 5
    assert account.metadata["ip"] == "198.51.100.23"
    assert account.client is not None
    assert account.client.ip == "198.51.100.23"
    assert ("ip", "198.51.100.23") in by_target
