"""The example SaaS API's behaviour, as its developers would write the tests, for every version.

FastAPI (``examples/saas_fastapi.py``), Flask (``examples/saas_flask.py``) and Django
(``examples/saas_django/``) serve the same HTTP API, each through a real server (uvicorn or
waitress). Each test runs against every framework's bare app and against the same app wrapped
in the one line (``AuditMiddleware``/``AuditWSGIMiddleware(..., rules_file=RULES_FILE)``): the
same assertions must hold. Where a framework's own answers differ (HEAD, the shape of a 422),
:class:`~tests.examples.frameworks.Framework` says how; the Flask and Django versions must also
answer a request sequence as the FastAPI version does.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from tests.examples.frameworks import Framework, Server
from tests.examples.helpers import (
    ALICE,
    BAD_TOKENS,
    BOB,
    CAROL,
    FORM,
    JSON,
    Answer,
    assert_same_answers_as_fastapi,
    bearer,
    claims,
    login,
    request_sequence,
)

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


def test_malformed_bodies_get_one_message(framework: Framework, client: httpx.Client) -> None:
    """One message per malformed body (FastAPI: pydantic's list of errors, see Framework)."""
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
        framework.assert_422_detail(response, detail)
    response = client.post("/orgs", content=b"\xff\xfe{", headers={**JSON, **bearer(token)})
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


def test_a_body_that_does_not_parse_is_refused_before_the_token(client: httpx.Client) -> None:
    assert client.post("/orgs", content=b"{", headers=JSON).status_code == 422
    assert client.post("/orgs", content=b"name=x", headers=FORM).status_code == 401
    assert client.post("/orgs", json={"nom": "x"}).status_code == 401


def test_unknown_paths_and_wrong_methods(framework: Framework, client: httpx.Client) -> None:
    response = client.get("/no-such-route")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    response = client.delete("/orgs")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "POST"
    assert client.options("/health").status_code == 405  # no automatic OPTIONS anywhere
    response = client.head("/health")
    assert response.status_code == framework.head_status  # Flask: 200; FastAPI, Django: 405
    assert response.content == b""
    assert client.get("/health").json() == {"status": "ok"}  # the connection is still in sync


@pytest.mark.parametrize("framework", ["flask", "django"], indirect=True)
def test_same_answers_as_the_fastapi_version(server: Server, fastapi_answers: list[Answer]) -> None:
    assert_same_answers_as_fastapi(request_sequence(server.url), fastapi_answers)
