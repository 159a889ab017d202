"""The example SaaS API (FastAPI) through real uvicorn servers, bare and wrapped in one line.

a. Behavioural tests of the app, as its developers would write them. Each runs against the bare
   app and against ``AuditMiddleware(create_app(), rules_file=...)``: the same assertions must
   hold, and one test checks byte-for-byte that both answer a request sequence identically.
b. Audit events: the scenario drives every endpoint once, and every expected event is checked
   field by field; no password, access token or API key secret may appear in any event.
c. Bad input: untrusted tokens never name an actor; odd bodies leave the app's answers alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from audit_middleware import AuditEvent, AuditMiddleware, Target
from audit_middleware.testing import CapturedEvents, capture_audit_events
from examples.saas_domain import PasswordHasher, Store
from examples.saas_fastapi import RULES_FILE, create_app
from examples.scenario import drive_all_events
from exporters import InMemoryExporter, StructlogExporter
from tests.conftest import serve

ROOT = Path(__file__).resolve().parents[2]
SECRET = "tests-only-saas-jwt-secret-0123456789abcdef"
OTHER_SECRET = "an-attackers-own-signing-secret-0123456789"
UA = "saas-example-tests/1.0 (audit)"
# A cheap scrypt cost keeps the suite fast; the algorithm and code paths are the real ones.
FAST_HASHER = PasswordHasher(n=2**10)
ALICE = ("alice@acme.test", "correct horse battery")  # usr_1, owner of org_1
BOB = ("bob@acme.test", "hunter2hunter2")  # usr_2, member of org_1
CAROL = ("carol@globex.test", "tr0ub4dor&3")  # usr_3, owner of org_2


# -- servers ----------------------------------------------------------------------------------


def make_app(variant: str, store: Store, *exporters: Any) -> Any:
    """The bare app, or the same app wrapped in one line (plus test-only delivery options)."""
    app = create_app(store, jwt_secret=SECRET)
    if variant == "bare":
        return app
    return AuditMiddleware(
        app,
        rules_file=RULES_FILE,
        exporters=list(exporters) or [InMemoryExporter()],
        environ={"SAAS_JWT_SECRET": SECRET},
        batch_interval=0.01,
    )


@dataclass
class Server:
    url: str
    store: Store
    app: Any

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"user-agent": UA}, timeout=10)


@contextmanager
def running(variant: str, *exporters: Any, store: Store | None = None) -> Iterator[Server]:
    """A fresh seeded store (or ``store``) behind a real uvicorn server."""
    store = store if store is not None else Store.seeded(hasher=FAST_HASHER)
    app = make_app(variant, store, *exporters)
    try:
        with serve(app) as url:
            yield Server(url, store, app)
    finally:
        if isinstance(app, AuditMiddleware):
            app.auditor.shutdown(timeout=2.0)


@pytest.fixture(params=["bare", "wrapped"])
def app_variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(app_variant: str) -> Iterator[Server]:
    with running(app_variant) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@dataclass
class Audited(Server):
    memory: InMemoryExporter
    log: io.BytesIO

    def delivered(self, n: int, timeout: float = 5.0) -> list[AuditEvent]:
        """Flush until the exporters have ``n`` events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.app.auditor.force_flush(timeout=1.0)
            if len(self.memory.events) >= n:
                return self.memory.events
            time.sleep(0.01)
        raise AssertionError(f"expected {n} delivered events, got {len(self.memory.events)}")


@pytest.fixture
def audited() -> Iterator[Audited]:
    """The wrapped app, delivering to memory and to the JSON-lines log exporter."""
    memory, log = InMemoryExporter(), io.BytesIO()
    with running("wrapped", memory, StructlogExporter(output=log)) as srv:
        yield Audited(srv.url, srv.store, srv.app, memory, log)


@pytest.fixture
def bare() -> Iterator[Server]:
    with running("bare") as srv:
        yield srv


def wait_for(events: CapturedEvents, n: int, timeout: float = 5.0) -> list[AuditEvent]:
    """Events are captured when a request *ends*, just after the client got its response."""
    deadline = time.monotonic() + timeout
    while len(events) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} events, got {events.actions}")
        time.sleep(0.005)
    return sorted(events, key=lambda e: e.occurred_at)  # request start order


# -- helpers ----------------------------------------------------------------------------------


def login(client: httpx.Client, email: str, password: str) -> str:
    response = client.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, SECRET, algorithms=["HS256"], audience="saas-api")
    return decoded


def make_token(
    *,
    secret: str = SECRET,
    algorithm: str = "HS256",
    exp_in: int = 3600,
    audience: str = "saas-api",
) -> str:
    now = int(time.time())
    payload = {
        "sub": "usr_1",
        "email": "alice@acme.test",
        "org_id": "org_1",
        "iat": now - 7200 if exp_in < 0 else now,
        "exp": now + exp_in,
        "jti": "f" * 32,
        "aud": audience,
    }
    if algorithm == "none":  # unsigned: header.payload. with an empty signature
        return jwt.encode(payload, None, algorithm="none")  # type: ignore[arg-type]
    return jwt.encode(payload, secret, algorithm=algorithm)


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "forged": lambda: make_token(secret=OTHER_SECRET),
    "expired": lambda: make_token(exp_in=-3600),
    "alg_none": lambda: make_token(algorithm="none"),
    "wrong_audience": lambda: make_token(audience="another-api"),
}


# == a. the app's behaviour, bare and wrapped =================================================


def test_health(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_register_then_login_issues_a_verifiable_token(client: httpx.Client) -> None:
    body = {"email": "Dave@Initech.test", "password": "s3cret-passw0rd", "name": "Dave"}
    response = client.post("/auth/register", json=body)
    assert response.status_code == 201
    assert response.json() == {"id": "usr_4", "email": "dave@initech.test", "name": "Dave"}

    response = client.post(
        "/auth/login", json={"email": "dave@initech.test", "password": "s3cret-passw0rd"}
    )
    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"
    token = claims(response.json()["access_token"])
    assert token["sub"] == "usr_4"
    assert token["email"] == "dave@initech.test"
    assert "org_id" not in token  # no organization yet
    assert token["exp"] - token["iat"] == 3600
    assert len(token["jti"]) == 32


def test_login_token_carries_the_first_org(client: httpx.Client) -> None:
    assert claims(login(client, *ALICE))["org_id"] == "org_1"
    assert claims(login(client, *CAROL))["org_id"] == "org_2"


INVALID_REGISTRATIONS: list[tuple[dict[str, Any], int]] = [
    ({"email": "alice@acme.test", "password": "another-password", "name": "A"}, 409),
    ({"email": "ALICE@acme.test", "password": "another-password", "name": "A"}, 409),
    ({"email": "not-an-email", "password": "long-enough-1", "name": "X"}, 422),
    ({"email": "x@y.test", "password": "short", "name": "X"}, 422),
    ({"email": "x@y.test", "password": "long-enough-1", "name": "  "}, 422),
    ({"email": "x@y.test", "password": "long-enough-1"}, 422),
]


def test_registration_is_validated(client: httpx.Client) -> None:
    for body, status in INVALID_REGISTRATIONS:
        assert client.post("/auth/register", json=body).status_code == status, body


def test_failed_logins_do_not_enumerate_accounts(client: httpx.Client) -> None:
    wrong_password = client.post(
        "/auth/login", json={"email": "alice@acme.test", "password": "nope-nope"}
    )
    unknown_user = client.post(
        "/auth/login", json={"email": "nobody@acme.test", "password": "nope-nope"}
    )
    for response in (wrong_password, unknown_user):
        assert response.status_code == 401
        assert response.json() == {"detail": "invalid email or password"}
        assert response.headers["www-authenticate"] == "Bearer"


PROTECTED = [
    ("POST", "/auth/logout"),
    ("POST", "/me/2fa/enable"),
    ("POST", "/orgs"),
    ("GET", "/orgs/org_1/members"),
    ("DELETE", "/orgs/org_1/members/usr_2"),
]


def test_protected_routes_need_a_valid_bearer_token(client: httpx.Client) -> None:
    untrusted = [f"Bearer {make()}" for make in BAD_TOKENS.values()]
    for authorization in [None, "Bearer not.a.jwt", "Basic YWxpY2U6cHc=", *untrusted]:
        headers = {} if authorization is None else {"authorization": authorization}
        for method, path in PROTECTED:
            response = client.request(method, path, headers=headers, json={"name": "x"})
            assert response.status_code == 401, (method, path, authorization)
            assert response.headers["www-authenticate"] == "Bearer"


def test_logout_revokes_only_that_token(client: httpx.Client) -> None:
    first, second = login(client, *ALICE), login(client, *ALICE)
    response = client.post("/auth/logout", headers=bearer(first))
    assert response.status_code == 204
    assert response.content == b""
    assert client.post("/me/2fa/enable", headers=bearer(first)).status_code == 401
    assert client.post("/auth/logout", headers=bearer(first)).status_code == 401
    assert client.post("/me/2fa/enable", headers=bearer(second)).status_code == 200


def test_password_reset_answers_the_same_for_any_address(
    client: httpx.Client, server: Server
) -> None:
    known = client.post("/auth/password-reset", json={"email": "bob@acme.test"})
    unknown = client.post("/auth/password-reset", json={"email": "nobody@acme.test"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json() == {"status": "sent"}
    assert [r.email for r in server.store.outbox] == ["bob@acme.test"]


def test_password_change(client: httpx.Client) -> None:
    token = login(client, *BOB)
    wrong = {"current_password": "not-my-password", "new_password": "brand-new-pass-1"}
    assert client.post("/me/password", json=wrong, headers=bearer(token)).status_code == 403
    too_short = {"current_password": BOB[1], "new_password": "short"}
    assert client.post("/me/password", json=too_short, headers=bearer(token)).status_code == 422
    good = {"current_password": BOB[1], "new_password": "brand-new-pass-1"}
    response = client.post("/me/password", json=good, headers=bearer(token))
    assert response.status_code == 204
    old = client.post("/auth/login", json={"email": BOB[0], "password": BOB[1]})
    assert old.status_code == 401
    login(client, BOB[0], "brand-new-pass-1")


def test_two_factor_enable_and_disable(client: httpx.Client, server: Server) -> None:
    token = login(client, *BOB)
    response = client.post("/me/2fa/enable", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"two_factor": True}
    assert server.store.users["usr_2"].two_factor
    wrong = client.post("/me/2fa/disable", json={"password": "guess-guess"}, headers=bearer(token))
    assert wrong.status_code == 403
    assert server.store.users["usr_2"].two_factor
    response = client.post("/me/2fa/disable", json={"password": BOB[1]}, headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"two_factor": False}
    assert not server.store.users["usr_2"].two_factor


def test_creating_an_org_makes_the_creator_its_owner(client: httpx.Client) -> None:
    token = login(client, *BOB)
    response = client.post("/orgs", json={"name": "Bob's Shop"}, headers=bearer(token))
    assert response.status_code == 201
    assert response.json() == {"id": "org_3", "name": "Bob's Shop"}
    members = client.get("/orgs/org_3/members", headers=bearer(token)).json()
    assert members == [
        {"user_id": "usr_2", "email": "bob@acme.test", "name": "Bob Builder", "role": "owner"}
    ]


ADMIN_ONLY = [
    ("PATCH", "/orgs/org_1/settings", {"theme": "dark"}),
    ("POST", "/orgs/org_1/api-keys", {"name": "mine"}),
    ("DELETE", "/orgs/org_1/api-keys/key_1", None),
    ("PUT", "/orgs/org_1/feature-flags/beta", {"enabled": True}),
    ("POST", "/orgs/org_1/invitations", {"email": "eve@acme.test", "role": "admin"}),
    ("PATCH", "/orgs/org_1/members/usr_1", {"role": "member"}),
    ("DELETE", "/orgs/org_1/members/usr_1", None),
]


def test_admin_routes_refuse_members_and_outsiders(client: httpx.Client, server: Server) -> None:
    bob, carol = login(client, *BOB), login(client, *CAROL)  # member of org_1; owner of org_2
    alice = login(client, *ALICE)
    for method, path, body in ADMIN_ONLY:
        for token in (bob, carol):
            response = client.request(method, path, json=body, headers=bearer(token))
            assert response.status_code == 403, (method, path)
            assert response.json() in (
                {"detail": "organization admins only"},
                {"detail": "not a member of this organization"},
            )
        unknown_org = path.replace("org_1", "org_404")
        response = client.request(method, unknown_org, json=body, headers=bearer(alice))
        assert response.status_code == 404, (method, unknown_org)
    # Nothing changed.
    assert server.store.orgs["org_1"].settings == {}
    assert server.store.api_keys == {}
    assert server.store.invitations == {}
    assert [(m.user_id, m.role) for m in server.store.memberships if m.org_id == "org_1"] == [
        ("usr_1", "owner"),
        ("usr_2", "member"),
    ]


def test_settings_are_merged(client: httpx.Client) -> None:
    token = login(client, *ALICE)
    first = client.patch("/orgs/org_1/settings", json={"sso": True}, headers=bearer(token))
    assert first.status_code == 200
    assert first.json() == {"sso": True}
    second = client.patch("/orgs/org_1/settings", json={"seats": 25}, headers=bearer(token))
    assert second.json() == {"sso": True, "seats": 25}
    bad = client.patch("/orgs/org_1/settings", json={"Bad Key": 1}, headers=bearer(token))
    assert bad.status_code == 422
    assert client.patch("/orgs/org_1/settings", json=[1], headers=bearer(token)).status_code == 422


def test_api_key_secret_is_shown_once_and_stored_hashed(
    client: httpx.Client, server: Server
) -> None:
    token = login(client, *ALICE)
    response = client.post("/orgs/org_1/api-keys", json={"name": "ci"}, headers=bearer(token))
    assert response.status_code == 201
    key = response.json()
    assert key["id"] == "key_1"
    assert key["name"] == "ci"
    assert key["secret"].startswith("sk_")
    stored = server.store.api_keys["key_1"]
    assert stored.secret_sha256 == hashlib.sha256(key["secret"].encode()).hexdigest()
    assert key["secret"] not in repr(vars(stored))
    assert client.delete("/orgs/org_1/api-keys/key_1", headers=bearer(token)).status_code == 204
    assert client.delete("/orgs/org_1/api-keys/key_1", headers=bearer(token)).status_code == 404
    carol = login(client, *CAROL)  # another tenant's key is not found in org_2
    client.post("/orgs/org_1/api-keys", json={"name": "ci"}, headers=bearer(token))
    response = client.delete("/orgs/org_2/api-keys/key_2", headers=bearer(carol))
    assert response.status_code == 404


def test_feature_flags(client: httpx.Client, server: Server) -> None:
    token = login(client, *ALICE)
    response = client.put(
        "/orgs/org_1/feature-flags/new-editor", json={"enabled": True}, headers=bearer(token)
    )
    assert response.status_code == 200
    assert response.json() == {"flag": "new-editor", "enabled": True}
    assert server.store.orgs["org_1"].feature_flags == {"new-editor": True}
    for flag, body in [("new-editor", {"enabled": "yes"}), ("Not A Flag", {"enabled": False})]:
        response = client.put(f"/orgs/org_1/feature-flags/{flag}", json=body, headers=bearer(token))
        assert response.status_code == 422


def test_invitation_flow(client: httpx.Client) -> None:
    alice = login(client, *ALICE)
    body = {"email": "dave@initech.test", "password": "daves-password", "name": "Dave"}
    assert client.post("/auth/register", json=body).status_code == 201
    invite = {"email": "dave@initech.test", "role": "member"}
    response = client.post("/orgs/org_1/invitations", json=invite, headers=bearer(alice))
    assert response.status_code == 201
    assert response.json() == {
        "id": "inv_1",
        "email": "dave@initech.test",
        "role": "member",
        "status": "pending",
    }
    again = client.post("/orgs/org_1/invitations", json=invite, headers=bearer(alice))
    assert again.status_code == 409
    member = {"email": "bob@acme.test", "role": "member"}
    assert (
        client.post("/orgs/org_1/invitations", json=member, headers=bearer(alice)).status_code
        == 409
    )
    owner = {"email": "eve@acme.test", "role": "owner"}
    assert (
        client.post("/orgs/org_1/invitations", json=owner, headers=bearer(alice)).status_code == 422
    )

    carol = login(client, *CAROL)  # the invitation is addressed to someone else
    assert client.post("/invitations/inv_1/accept", headers=bearer(carol)).status_code == 403
    dave = login(client, "dave@initech.test", "daves-password")
    assert client.post("/invitations/inv_404/accept", headers=bearer(dave)).status_code == 404
    response = client.post("/invitations/inv_1/accept", headers=bearer(dave))
    assert response.status_code == 200
    assert response.json() == {"org_id": "org_1", "role": "member"}
    assert client.post("/invitations/inv_1/accept", headers=bearer(dave)).status_code == 409
    members = client.get("/orgs/org_1/members", headers=bearer(dave)).json()
    assert [(m["user_id"], m["role"]) for m in members] == [
        ("usr_1", "owner"),
        ("usr_2", "member"),
        ("usr_4", "member"),
    ]


def test_member_management(client: httpx.Client) -> None:
    alice, bob = login(client, *ALICE), login(client, *BOB)
    response = client.patch(
        "/orgs/org_1/members/usr_2", json={"role": "admin"}, headers=bearer(alice)
    )
    assert response.status_code == 200
    assert response.json() == {"user_id": "usr_2", "role": "admin"}
    # Bob is an admin now: admin routes work for him, owner changes still do not.
    response = client.post("/orgs/org_1/api-keys", json={"name": "bob"}, headers=bearer(bob))
    assert response.status_code == 201
    response = client.patch(
        "/orgs/org_1/members/usr_1", json={"role": "member"}, headers=bearer(bob)
    )
    assert response.status_code == 403
    response = client.patch(
        "/orgs/org_1/members/usr_2", json={"role": "superuser"}, headers=bearer(alice)
    )
    assert response.status_code == 422
    response = client.patch(
        "/orgs/org_1/members/usr_1", json={"role": "admin"}, headers=bearer(alice)
    )
    assert response.status_code == 409  # the last owner stays an owner
    assert client.delete("/orgs/org_1/members/usr_1", headers=bearer(alice)).status_code == 409

    assert client.delete("/orgs/org_1/members/usr_2", headers=bearer(alice)).status_code == 204
    assert client.delete("/orgs/org_1/members/usr_2", headers=bearer(alice)).status_code == 404
    assert client.get("/orgs/org_1/members", headers=bearer(bob)).status_code == 403
    members = client.get("/orgs/org_1/members", headers=bearer(alice)).json()
    assert [m["user_id"] for m in members] == ["usr_1"]


def test_members_are_visible_to_members_only(client: httpx.Client) -> None:
    bob, carol = login(client, *BOB), login(client, *CAROL)
    assert client.get("/orgs/org_1/members", headers=bearer(bob)).status_code == 200
    assert client.get("/orgs/org_1/members", headers=bearer(carol)).status_code == 403
    assert client.get("/orgs/org_404/members", headers=bearer(carol)).status_code == 404


# -- the same answers, byte for byte ----------------------------------------------------------


def _normalize(value: Any) -> Any:
    """Tokens and API key secrets are random by design: replace them with placeholders."""
    if isinstance(value, dict):
        return {
            k: f"<{k}>" if k in ("access_token", "secret") else _normalize(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _snapshot(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = [
        (k.lower(), v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("date", "server")
    ]
    body: Any = response.content
    if response.content and response.headers.get("content-type") == "application/json":
        body = _normalize(response.json())
    return response.status_code, headers, body


def _chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


def _request_sequence(url: str) -> list[tuple[str, str, Any]]:
    """A fixed sequence of good and bad requests; returns (method, path, snapshot) triples."""
    seen: list[tuple[str, str, Any]] = []
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10) as c:

        def send(method: str, path: str, as_: str | None = None, **kw: Any) -> httpx.Response:
            headers = dict(kw.pop("headers", {}))
            if as_ is not None:
                headers["authorization"] = f"Bearer {tokens.get(as_, as_)}"
            response = c.request(method, path, headers=headers, **kw)
            seen.append((method, path, _snapshot(response)))
            return response

        def log_in(name: str, email: str, password: str) -> None:
            response = send("POST", "/auth/login", json={"email": email, "password": password})
            tokens[name] = response.json()["access_token"]

        dave = {"email": "dave@initech.test", "password": "daves-password", "name": "Dave"}
        send("GET", "/health")
        send("POST", "/auth/register", json=dave)
        send("POST", "/auth/register", json=dave)
        send("POST", "/auth/register", json={**dave, "email": "nope"})
        send("POST", "/auth/login", json={"email": ALICE[0], "password": "wrong-password"})
        send("POST", "/auth/login", json={"email": "nobody@x.test", "password": "whatever"})
        log_in("alice", *ALICE)
        log_in("bob", *BOB)
        log_in("dave", dave["email"], dave["password"])
        form = {"content-type": "application/x-www-form-urlencoded"}
        send("POST", "/auth/login", content=b"email=alice%40acme.test&password=pw", headers=form)
        send(
            "POST",
            "/auth/login",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        send("POST", "/auth/login", json={"password": ALICE[1]})
        send("POST", "/auth/login", json={"email": ALICE[0], "password": "x", "pad": "y" * 200_000})
        send(
            "POST",
            "/auth/login",
            content=_chunks(
                b'{"email": "alice@acme.test", ', b'"password": "correct horse battery"}'
            ),
            headers={"content-type": "application/json"},
        )
        send("POST", "/orgs", "dave", json={"name": "Initech"})
        send("PATCH", "/orgs/org_1/settings", "alice", json={"sso": True, "seats": 10})
        send("PATCH", "/orgs/org_1/settings", "bob", json={"sso": False})
        send("PUT", "/orgs/org_1/feature-flags/beta", "alice", json={"enabled": True})
        send("PUT", "/orgs/org_1/feature-flags/beta", "alice", json={"enabled": "yes"})
        send("POST", "/orgs/org_1/api-keys", "alice", json={"name": "ci"})
        send("DELETE", "/orgs/org_1/api-keys/key_1", "bob")
        send("DELETE", "/orgs/org_1/api-keys/key_1", "alice")
        send("DELETE", "/orgs/org_1/api-keys/key_1", "alice")
        send(
            "POST",
            "/orgs/org_1/invitations",
            "alice",
            json={"email": dave["email"], "role": "member"},
        )
        send("POST", "/invitations/inv_1/accept", "bob")
        send("POST", "/invitations/inv_1/accept", "dave")
        send("GET", "/orgs/org_1/members", "alice")
        send("PATCH", "/orgs/org_1/members/usr_4", "alice", json={"role": "admin"})
        send("DELETE", "/orgs/org_1/members/usr_4", "alice")
        send("GET", "/orgs/org_2/members", "alice")
        send("GET", "/orgs/org_404/members", "alice")
        send(
            "POST",
            "/me/password",
            "alice",
            json={"current_password": "nope-nope", "new_password": "new-password-1"},
        )
        send(
            "POST",
            "/me/password",
            "alice",
            json={"current_password": ALICE[1], "new_password": "new-password-1"},
        )
        send("POST", "/me/2fa/enable", "alice")
        send("POST", "/me/2fa/disable", "alice", json={"password": "wrong-again"})
        send("POST", "/me/2fa/disable", "alice", json={"password": "new-password-1"})
        send("POST", "/auth/password-reset", json={"email": BOB[0]})
        send("POST", "/auth/password-reset", json={"email": "nobody@x.test"})
        send("POST", "/health", json={"unexpected": "body"})
        send("POST", "/health", content=_chunks(b"streamed ", b"body"))
        send("GET", "/no-such-route")
        send("POST", "/me/2fa/enable", BAD_TOKENS["forged"]())
        send("POST", "/me/2fa/enable", BAD_TOKENS["alg_none"]())
        send("POST", "/auth/logout", "alice")
        send("POST", "/me/2fa/enable", "alice")  # revoked
        send("POST", "/auth/logout")
    return seen


def test_bare_and_wrapped_answer_identically() -> None:
    """Statuses, headers and bodies are the same with and without the middleware."""
    with running("bare") as srv:
        bare_answers = _request_sequence(srv.url)
    with running("wrapped") as srv, capture_audit_events() as events:
        wrapped_answers = _request_sequence(srv.url)
        wait_for(events, len(wrapped_answers) - 2)  # the two GETs no rule names
    assert len(bare_answers) == 46
    for bare_answer, wrapped_answer in zip(bare_answers, wrapped_answers, strict=True):
        assert wrapped_answer == bare_answer


# == b. audit events through uvicorn ==========================================================


def _parse_time(stamp: str) -> datetime:
    assert stamp.endswith("Z"), stamp
    return datetime.fromisoformat(stamp)


def test_every_api_call_yields_its_audit_event(audited: Audited) -> None:
    started = datetime.now(UTC)
    with capture_audit_events() as captured:
        journal = drive_all_events(audited.url, user_agent=UA)
        events = wait_for(captured, len(journal.expected))
    finished = datetime.now(UTC)

    assert [e.action for e in events] == [x.action for x in journal.expected]
    assert {x.action for x in journal.expected} == {
        "user.registered",
        "user.login.succeeded",
        "user.login.failed",
        "user.logout",
        "user.two_factor.enabled",
        "user.two_factor.disabled",
        "user.password.changed",
        "user.password.reset_requested",
        "org.created",
        "org.settings.updated",
        "org.api_key.created",
        "org.api_key.deleted",
        "org.feature_flag.updated",
        "org.invitation.sent",
        "org.invitation.accepted",
        "org.member.removed",
        "org.member.role_updated",
        "org.member.listed",
    }
    for step, event in zip(journal.audited_steps, events, strict=True):
        expected = step.expected
        assert expected is not None
        where = f"{step.method} {step.path} -> {expected.action}"
        assert event.action == expected.action, where
        assert event.outcome == expected.outcome, where
        assert event.actor.id == expected.actor_id, where
        assert event.actor.type == ("anonymous" if expected.actor_id is None else "user"), where
        if step.actor_email is not None:
            assert event.actor.email == step.actor_email, where
        assert event.target == Target(expected.target_type or "", expected.target_id), where
        assert event.org_id == expected.org_id, where
        for key, value in step.metadata.items():
            assert event.metadata.get(key) == value, where
        assert event.client is not None
        assert event.client.ip == "127.0.0.1", where
        assert event.client.peer == "127.0.0.1", where
        assert event.client.user_agent == UA, where
        assert started <= _parse_time(event.occurred_at) <= finished, where
        assert event.request is not None
        assert (event.request.method, event.request.path) == (step.method, step.path), where
        assert event.request.status == step.status, where
        assert event.request.completed is True, where

    # Nothing secret anywhere: passwords, access tokens, API key secrets.
    assert len(journal.secrets) == 4 + 3 + 1
    for event in events:
        text = json.dumps(event.to_dict())
        for secret in journal.secrets:
            assert secret not in text, f"{event.action} leaks a secret"


def test_delivered_events_and_log_lines_hold_no_secret(audited: Audited) -> None:
    """The same check on what the exporters received, including the rendered JSON lines."""
    journal = drive_all_events(audited.url, user_agent=UA)
    delivered = audited.delivered(len(journal.expected))
    assert sorted(e.action for e in delivered) == sorted(x.action for x in journal.expected)
    lines = audited.log.getvalue().decode().splitlines()
    assert len(lines) == len(journal.expected)
    logged = [json.loads(line) for line in lines]
    assert sorted(x["event"] for x in logged) == sorted(x.action for x in journal.expected)
    everything = audited.log.getvalue().decode() + json.dumps([e.to_dict() for e in delivered])
    for secret in journal.secrets:
        assert secret not in everything
    assert not audited.app.auditor.stats().dropped_overflow


class SecondBoundaryHasher(PasswordHasher):
    """Verifies passwords just after the next whole second, as a slow login might."""

    def verify(self, password: str, stored: str) -> bool:
        time.sleep(math.ceil(time.time()) - time.time() + 0.02)
        return super().verify(password, stored)


def test_a_login_that_crosses_a_second_boundary_still_names_its_actor() -> None:
    """The returned token's ``iat`` (whole seconds) is later than the request's start time.

    The library checks a response token as of the response, not the request's start, so the
    token verifies even with ``leeway_seconds = 0``.
    """
    store = Store.seeded(hasher=FAST_HASHER)
    store.hasher = SecondBoundaryHasher(n=2**10)
    with (
        running("wrapped", store=store) as srv,
        srv.client() as c,
        capture_audit_events() as captured,
    ):
        token = login(c, *ALICE)
        [event] = wait_for(captured, 1)
    assert claims(token)["iat"] > datetime.fromisoformat(event.occurred_at).timestamp()
    assert event.action == "user.login.succeeded"
    assert event.actor.id == "usr_1"
    assert event.actor.email == ALICE[0]
    assert event.org_id == "org_1"


# == c. bad input ============================================================================


def test_untrusted_tokens_never_name_an_actor(audited: Audited) -> None:
    routes = {"/auth/logout": "user.logout", "/me/2fa/enable": "user.two_factor.enabled"}
    with audited.client() as c:
        for kind, make in BAD_TOKENS.items():
            for path, action in routes.items():
                token = make()
                with capture_audit_events() as captured:
                    response = c.post(path, headers=bearer(token))
                    [event] = wait_for(captured, 1)
                where = (kind, path)
                assert response.status_code == 401, where
                assert event.action == action, where
                assert event.outcome == "denied", where
                assert event.actor.id is None, where
                assert event.actor.type == "anonymous", where
                assert event.org_id is None, where  # not the token's org_1 either
                assert event.target == Target("user", None), where  # its sub is never read
                text = json.dumps(event.to_dict())
                for claimed in ("usr_1", "alice@acme.test", "org_1", token):
                    assert claimed not in text, where


LOGIN_BODIES: dict[str, dict[str, Any]] = {
    "huge_json": {
        "json": {"email": ALICE[0], "password": "a-wrong-password", "pad": "x" * 200_000}
    },
    "form_not_json": {
        "content": b"email=alice%40acme.test&password=a-wrong-password",
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    },
    "garbage": {
        "content": b"\x00\xff{password=a-wrong-password",
        "headers": {"content-type": "application/json"},
    },
    "missing_email": {"json": {"password": "a-wrong-password"}},
    "streamed": {
        "content": [b'{"email": "alice@acme.test",', b' "password": "a-wrong-password"}'],
        "headers": {"content-type": "application/json"},
    },
}


@pytest.mark.parametrize("case", sorted(LOGIN_BODIES))
def test_odd_login_bodies_get_the_apps_own_answer(
    audited: Audited, bare: Server, case: str
) -> None:
    def post(url: str) -> httpx.Response:
        kwargs = dict(LOGIN_BODIES[case])
        if isinstance(kwargs.get("content"), list):
            kwargs["content"] = _chunks(*kwargs["content"])  # a chunked, streamed body
        with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10) as c:
            return c.post("/auth/login", **kwargs)

    expected = post(bare.url)
    with capture_audit_events() as captured:
        response = post(audited.url)
        [event] = wait_for(captured, 1)
    assert _snapshot(response) == _snapshot(expected)
    assert response.status_code in (401, 422)
    assert event.action == "user.login.failed"
    assert event.outcome == ("denied" if response.status_code == 401 else "failure")
    assert event.actor.id is None
    assert event.target is not None
    assert event.target.id in (None, ALICE[0])
    if case == "streamed":
        assert event.target.id == ALICE[0]  # the body the app read, across chunks
    text = json.dumps(event.to_dict())
    assert "a-wrong-password" not in text
    assert "xxxxxxxxxx" not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"unexpected": "body"}},
        {"content": b"x" * 300_000},
        {"content": "streamed"},
    ],
    ids=["json", "large", "streamed"],
)
def test_bodies_the_app_never_reads(audited: Audited, bare: Server, kwargs: dict[str, Any]) -> None:
    def post(url: str) -> httpx.Response:
        send = dict(kwargs)
        if send.get("content") == "streamed":
            send["content"] = _chunks(b"never ", b"read ", b"by the app")
        with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10) as c:
            return c.post("/health", **send)

    expected = post(bare.url)
    with capture_audit_events() as captured:
        response = post(audited.url)
        [event] = wait_for(captured, 1)
    assert response.status_code == 405
    assert _snapshot(response) == _snapshot(expected)
    assert event.action == "http.post"  # unmatched state-changing request
    assert event.outcome == "failure"
    assert event.request is not None
    assert event.request.status == 405


# == the deployment line ======================================================================


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_uvicorn_serves_the_one_line_app_from_the_environment() -> None:
    """``uvicorn examples.saas_fastapi:app`` with SAAS_JWT_SECRET set: JSON events on stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_LOG_", "SAAS_"))}
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import examples.saas_fastapi as m\n"  # importing needs no secret...
            "try:\n    m.app\nexcept Exception as e:\n    print(type(e).__name__, e)\n",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert missing.stdout.startswith("AuditConfigError"), missing.stdout + missing.stderr
    assert "SAAS_JWT_SECRET" in missing.stdout  # ...but serving it does

    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "examples.saas_fastapi:app"]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, "SAAS_JWT_SECRET": SECRET},
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10) as c:
            while True:
                try:
                    c.get("/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            bad = c.post("/auth/login", json={"email": ALICE[0], "password": "not-it-at-all"})
            assert bad.status_code == 401
            token = login(c, *ALICE)
            assert c.post("/me/2fa/enable", headers=bearer(token)).status_code == 200
    finally:
        proc.terminate()  # graceful: lifespan shutdown flushes the events
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert [e["action"] for e in events] == [
        "user.login.failed",
        "user.login.succeeded",
        "user.two_factor.enabled",
    ], err.decode()
    failed, succeeded, enabled = events
    assert failed["actor"] == {"id": None, "type": "anonymous"}
    assert failed["target"] == {"type": "user", "id": ALICE[0]}
    assert succeeded["actor"] == {"id": "usr_1", "type": "user", "email": ALICE[0]}
    assert succeeded["org_id"] == "org_1"
    assert enabled["actor"]["id"] == "usr_1"
    assert enabled["org_id"] == "org_1"
    assert enabled["client"]["user_agent"] == UA
    assert "not-it-at-all" not in out.decode()
    assert token not in out.decode()
