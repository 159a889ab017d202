"""The example SaaS API on Flask through real waitress servers, bare and wrapped in one line.

a. Behavioural tests of the app, as its developers would write them (the FastAPI version's,
   since it is the same HTTP API). Each runs against the bare app and against the app whose
   ``wsgi_app`` is wrapped in ``AuditWSGIMiddleware(..., rules_file=RULES_FILE)``: the same
   assertions must hold, and the answers must be those of the FastAPI version.
b. Bare and wrapped answer a request sequence identically (statuses, headers, bodies).
c. Audit events: the scenario drives every endpoint once, and every expected event is checked
   field by field; no password, access token or API key secret may appear in any event.
d. Bad input: untrusted tokens never name an actor; odd bodies, bodies the app never reads and
   Flask's own 404/405/500 answers are left alone and audited with the right outcome.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from audit_middleware import AuditWSGIMiddleware, ErrorInfo, Exporter, Target
from audit_middleware.testing import capture_audit_events
from examples.saas_domain import Store
from examples.saas_flask import RULES_FILE, create_app
from examples.scenario import drive_all_events
from tests.examples.conftest import (
    ALICE,
    BAD_TOKENS,
    BOB,
    CAROL,
    DB_SECRET,
    FORM,
    JSON,
    LOGIN_BODIES,
    NEVER_READ,
    SECRET,
    UA,
    Answer,
    AppBuilder,
    Built,
    ExplodingStore,
    Running,
    Server,
    assert_same_answers_as_fastapi,
    assert_scenario_events,
    audit_options,
    audited_count,
    bearer,
    claims,
    import_without_secret,
    login,
    post_login,
    post_unread,
    request_sequence,
    snapshot,
    utc_now,
    wait_for,
    waitress_serving,
)


def build(variant: str, store: Store, exporters: Sequence[Exporter]) -> Built:
    """The bare app, or the same app wrapped in one line (plus test-only delivery options)."""
    app = create_app(store, jwt_secret=SECRET)
    if variant == "bare":
        return Built(app, None)
    middleware = AuditWSGIMiddleware(
        app.wsgi_app, rules_file=RULES_FILE, **audit_options(exporters)
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return Built(app, middleware)


@pytest.fixture
def build_app() -> AppBuilder:
    return build


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


def test_malformed_bodies_get_one_message(client: httpx.Client) -> None:
    token = login(client, *ALICE)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content": b"{not json", "headers": JSON}, "body: JSON decode error"),
        ({"json": [1]}, "body: Input should be a valid dictionary"),
        ({"content": b"name=x", "headers": FORM}, "body: Input should be a valid dictionary"),
        ({"content": b'{"name": "no content type"}'}, "body: Input should be a valid dictionary"),
        ({}, "body: Field required"),
        ({"json": {}}, "body.name: Field required"),
        ({"json": {"name": 3}}, "body.name: Input should be a valid string"),
    ]
    for kwargs, detail in cases:
        headers = {**bearer(token), **kwargs.pop("headers", {})}
        response = client.post("/orgs", headers=headers, **kwargs)
        assert response.status_code == 422, detail
        assert response.json() == {"detail": detail}
    response = client.post("/orgs", content=b"\xff\xfe{", headers={**JSON, **bearer(token)})
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


def test_a_body_that_does_not_parse_is_refused_before_the_token(client: httpx.Client) -> None:
    assert client.post("/orgs", content=b"{", headers=JSON).status_code == 422
    assert client.post("/orgs", content=b"name=x", headers=FORM).status_code == 401
    assert client.post("/orgs", json={"nom": "x"}).status_code == 401


def test_unknown_paths_and_wrong_methods(client: httpx.Client) -> None:
    response = client.get("/no-such-route")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    response = client.delete("/orgs")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "POST"
    assert client.options("/health").status_code == 405  # as FastAPI: no automatic OPTIONS


def test_same_answers_as_the_fastapi_version(server: Server, fastapi_answers: list[Answer]) -> None:
    assert_same_answers_as_fastapi(request_sequence(server.url), fastapi_answers)


# == b. the same answers, bare and wrapped ====================================================


def test_bare_and_wrapped_answer_identically(running: Running) -> None:
    """Statuses, headers and bodies are the same with and without the middleware."""
    with running("bare") as srv:
        bare_answers = request_sequence(srv.url)
    with running("wrapped") as srv, capture_audit_events() as events:
        wrapped_answers = request_sequence(srv.url)
        wait_for(events, audited_count(wrapped_answers))
    assert len(bare_answers) == 59
    for bare_answer, wrapped_answer in zip(bare_answers, wrapped_answers, strict=True):
        assert wrapped_answer == bare_answer


# == c. audit events through waitress =========================================================


def test_every_api_call_yields_its_audit_event(audited: Server) -> None:
    started = utc_now()
    with capture_audit_events() as captured:
        journal = drive_all_events(audited.url, user_agent=UA)
        events = wait_for(captured, len(journal.expected))
    assert_scenario_events(journal, events, started, utc_now())


def test_delivered_events_and_log_lines_hold_no_secret(audited: Server) -> None:
    """The same check on what the exporters received, including the rendered JSON lines."""
    assert audited.log is not None
    assert audited.middleware is not None
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
    assert not audited.middleware.auditor.stats().dropped_overflow


# == d. bad input =============================================================================


def test_untrusted_tokens_never_name_an_actor(audited: Server) -> None:
    routes = {"/auth/logout": "user.logout", "/me/2fa/enable": "user.two_factor.enabled"}
    cases = [(kind, make(), path) for kind, make in BAD_TOKENS.items() for path in routes]
    with audited.client() as c, capture_audit_events() as captured:
        responses = [c.post(path, headers=bearer(token)) for _, token, path in cases]
        events = wait_for(captured, len(cases))
    for (kind, token, path), response, event in zip(cases, responses, events, strict=True):
        where = (kind, path)
        assert response.status_code == 401, where
        assert event.action == routes[path], where
        assert event.outcome == "denied", where
        assert event.actor.id is None, where
        assert event.actor.type == "anonymous", where
        assert event.org_id is None, where  # not the token's org_1 either
        assert event.target == Target("user", None), where  # its sub is never read
        text = json.dumps(event.to_dict())
        for claimed in ("usr_1", "alice@acme.test", "org_1", token):
            assert claimed not in text, where


@pytest.mark.parametrize("case", sorted(LOGIN_BODIES))
def test_odd_login_bodies_get_the_apps_own_answer(running: Running, case: str) -> None:
    with running("bare") as srv:
        expected = post_login(srv.url, case)
    with running("wrapped") as srv, capture_audit_events() as captured:
        response = post_login(srv.url, case)
        [event] = wait_for(captured, 1)
    assert snapshot(response) == snapshot(expected)
    assert response.status_code in (400, 401, 422)
    assert event.action == "user.login.failed"
    assert event.outcome == ("denied" if response.status_code == 401 else "failure")
    assert event.request is not None
    assert event.request.status == response.status_code
    assert event.actor.id is None
    assert event.target is not None
    assert event.target.id in (None, ALICE[0])
    if case == "streamed":
        assert event.target.id == ALICE[0]  # the body the app read, across chunks
    text = json.dumps(event.to_dict())
    assert "a-wrong-password" not in text
    assert "xxxxxxxxxx" not in text


@pytest.mark.parametrize("case", sorted(NEVER_READ))
def test_bodies_the_app_never_reads(running: Running, case: str) -> None:
    """A 405 (Flask's routing answers before any view) and a view that takes no body."""

    def send(url: str) -> list[httpx.Response]:
        with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10) as c:
            token = login(c, *BOB)
        return [
            post_unread(url, "/health", case),
            post_unread(url, "/me/2fa/enable", case, **bearer(token)),
        ]

    with running("bare") as srv:
        expected = send(srv.url)
    with running("wrapped") as srv, capture_audit_events() as captured:
        responses = send(srv.url)
        _, refused, enabled = wait_for(captured, 3)
    assert [snapshot(r) for r in responses] == [snapshot(r) for r in expected]
    assert [r.status_code for r in responses] == [405, 200]
    assert refused.action == "http.post"  # unmatched state-changing request
    assert refused.outcome == "failure"
    assert refused.request is not None
    assert refused.request.status == 405
    assert enabled.action == "user.two_factor.enabled"
    assert enabled.outcome == "success"
    assert enabled.actor.id == "usr_2"
    assert enabled.target == Target("user", "usr_2")
    for event in (refused, enabled):
        text = json.dumps(event.to_dict())
        assert "never" not in text
        assert "unexpected" not in text


def _error_requests(url: str) -> list[httpx.Response]:
    with httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10) as c:
        token = login(c, *ALICE)
        return [
            c.post("/no-such-route", json={"name": "x"}),  # 404
            c.get("/no-such-route"),  # 404, a read no rule names: not audited
            c.delete("/health"),  # 405
            c.get("/orgs/org_1/members", headers=bearer(token)),  # the store raises: 500
            c.post("/orgs/org_1/api-keys", json={"name": "ci"}, headers=bearer(token)),  # 500
        ]


def test_flasks_own_errors_are_answered_and_audited(running: Running) -> None:
    """404, 405 and a 500 from a view that raises: same answers as bare, right outcomes."""
    with running("bare", store=ExplodingStore.make()) as srv:
        expected = _error_requests(srv.url)
    with (
        running("wrapped", store=ExplodingStore.make()) as srv,
        capture_audit_events() as captured,
    ):
        responses = _error_requests(srv.url)
        login_event, *events = wait_for(captured, 5)
    assert [snapshot(r) for r in responses] == [snapshot(r) for r in expected]
    assert [r.status_code for r in responses] == [404, 404, 405, 500, 500]
    assert responses[3].text == "Internal Server Error"
    assert responses[3].headers["content-type"] == "text/plain; charset=utf-8"

    assert login_event.action == "user.login.succeeded"
    not_found, not_allowed, listed, created = events
    assert (not_found.action, not_found.outcome) == ("http.post", "failure")
    assert (not_allowed.action, not_allowed.outcome) == ("http.delete", "failure")
    assert (listed.action, listed.outcome) == ("org.member.listed", "error")
    assert (created.action, created.outcome) == ("org.api_key.created", "error")
    for event, status in zip(events, [404, 405, 500, 500], strict=True):
        assert event.request is not None
        assert event.request.status == status, event.action
        assert event.request.completed is True, event.action
        assert DB_SECRET not in json.dumps(event.to_dict()), event.action
    for event in (listed, created):
        assert event.actor.id == "usr_1"
        assert event.org_id == "org_1"
    assert listed.target == Target("org", "org_1")
    assert created.target == Target("api_key", None)  # there is no response.id
    assert created.metadata == {"name": "ci"}


def test_a_500_names_the_exception_class(running: Running) -> None:
    """``error`` is "the exception class for outcome error, never its message" (README).

    The FastAPI version's event for the very same request says ``RuntimeError``.
    """
    with (
        running("wrapped", store=ExplodingStore.make()) as srv,
        capture_audit_events() as captured,
    ):
        assert _error_requests(srv.url)[3].status_code == 500
        listed = next(e for e in wait_for(captured, 5) if e.action == "org.member.listed")
    assert listed.outcome == "error"
    assert DB_SECRET not in json.dumps(listed.to_dict())
    assert listed.error == ErrorInfo("RuntimeError")


# == the deployment line ======================================================================


def test_waitress_serves_the_one_line_app_from_the_environment() -> None:
    """``waitress-serve --call examples.saas_flask:wrapped_app``: JSON events on stdout."""
    missing = import_without_secret(
        "import examples.saas_flask as m\n"
        "m.create_app()\n"  # importing and building the app need no secret...
        "try:\n    m.wrapped_app()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    assert missing.startswith("AuditConfigError"), missing
    assert "SAAS_JWT_SECRET" in missing  # ...but serving it does

    for target in (["--call", "examples.saas_flask:wrapped_app"], ["examples.saas_flask:app"]):
        with waitress_serving(*target) as served, httpx.Client(base_url=served.url) as c:
            c.headers["user-agent"] = UA
            bad = c.post("/auth/login", json={"email": ALICE[0], "password": "not-it-at-all"})
            assert bad.status_code == 401
            token = login(c, *ALICE)
            assert c.post("/me/2fa/enable", headers=bearer(token)).status_code == 200
        events = served.events()
        assert [e["action"] for e in events] == [
            "user.login.failed",
            "user.login.succeeded",
            "user.two_factor.enabled",
        ], served.stderr
        failed, succeeded, enabled = events
        assert failed["actor"] == {"id": None, "type": "anonymous"}
        assert failed["target"] == {"type": "user", "id": ALICE[0]}
        assert succeeded["actor"] == {"id": "usr_1", "type": "user", "email": ALICE[0]}
        assert succeeded["org_id"] == "org_1"
        assert enabled["actor"]["id"] == "usr_1"
        assert enabled["org_id"] == "org_1"
        assert enabled["request"]["route"] == "/me/2fa/enable"
        assert enabled["client"]["user_agent"] == UA
        assert "not-it-at-all" not in served.stdout
        assert token not in served.stdout
