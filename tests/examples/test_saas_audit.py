"""The example SaaS API wrapped in one line: its audit events, for every version.

a. Bare and wrapped answer a request sequence identically (statuses, headers, bodies).
b. Audit events: the scenario drives every endpoint once, and every expected event is checked
   field by field; no password, access token or API key secret may appear in any event.
c. Bad input: untrusted tokens never name an actor; odd bodies, bodies the app never reads and
   the framework's own 404/405/500 answers (and Django's 400) are left alone and audited with
   the right outcome.
d. The deployment line: the production server serves the one-line app from the environment.
"""

from __future__ import annotations

import json

import httpx
import pytest

from audit_middleware import ErrorInfo, Target
from audit_middleware.testing import capture_audit_events
from examples.scenario import drive_all_events
from tests.examples.frameworks import Framework, Running, Server
from tests.examples.helpers import (
    ALICE,
    BAD_TOKENS,
    BOB,
    DB_SECRET,
    LOGIN_BODIES,
    NEVER_READ,
    UA,
    ExplodingStore,
    assert_scenario_events,
    audited_count,
    bearer,
    free_port,
    http_client,
    login,
    post_body,
    request_sequence,
    run_without_secret,
    serving,
    snapshot,
    utc_now,
    wait_for,
)

# == a. the same answers, bare and wrapped ====================================================


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


# == b. audit events through a real server ===================================================


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


# == c. bad input =============================================================================


def test_untrusted_tokens_never_name_an_actor(audited: Server) -> None:
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


@pytest.mark.parametrize("case", sorted(LOGIN_BODIES))
def test_odd_login_bodies_get_the_apps_own_answer(running: Running, case: str) -> None:
    with running("bare") as srv:
        expected = post_body(srv.url, "/auth/login", LOGIN_BODIES[case])
    with running("wrapped") as srv, capture_audit_events() as captured:
        response = post_body(srv.url, "/auth/login", LOGIN_BODIES[case])
        [event] = wait_for(captured, 1)
    assert snapshot(response) == snapshot(expected)
    assert response.status_code in (401, 422)
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
    """A 405 (the framework's routing answers before any view) and a view that takes no body."""

    def send(url: str) -> list[httpx.Response]:
        with http_client(url) as c:
            token = login(c, *BOB)
        return [
            post_body(url, "/health", NEVER_READ[case]),
            post_body(url, "/me/2fa/enable", NEVER_READ[case], **bearer(token)),
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


def _error_requests(framework: Framework, url: str) -> list[httpx.Response]:
    """A login, then requests the framework answers with its own errors; audited but one."""
    with http_client(url) as c:
        token = login(c, *ALICE)
        responses = [
            c.post("/no-such-route", json={"name": "x"}),  # 404
            c.get("/no-such-route"),  # 404, a read no rule names: not audited
            c.delete("/health"),  # 405
            c.get("/orgs/org_1/members", headers=bearer(token)),  # the store raises: 500
            c.post("/orgs/org_1/api-keys", json={"name": "ci"}, headers=bearer(token)),  # 500
        ]
        if framework.checks_host:  # Django: outside ALLOWED_HOSTS, 400
            body = {"email": ALICE[0]}
            responses.append(c.post("/auth/login", json=body, headers={"host": "evil.test"}))
        return responses


# uvicorn closes a connection once an exception escaped the app (FastAPI's 500): these two tests
# send their requests over one connection, as a WSGI server keeps it open.
WSGI_ONLY = pytest.mark.parametrize("framework", ["flask", "django"], indirect=True)


@WSGI_ONLY
def test_the_frameworks_own_errors_are_answered_and_audited(
    framework: Framework, running: Running
) -> None:
    """404, 405 and a 500 from a view that raises: same answers as bare, right outcomes."""
    with running("bare", store=ExplodingStore.make()) as srv:
        expected = _error_requests(framework, srv.url)
    with (
        running("wrapped", store=ExplodingStore.make()) as srv,
        capture_audit_events() as captured,
    ):
        responses = _error_requests(framework, srv.url)
        # The login's event, and one per error but the GET's.
        login_event, *events = wait_for(captured, len(responses))
    statuses = [404, 405, 500, 500, *([400] if framework.checks_host else [])]
    assert [snapshot(r) for r in responses] == [snapshot(r) for r in expected]
    assert [r.status_code for r in responses] == [404, *statuses]
    assert responses[3].text == "Internal Server Error"
    assert responses[3].headers["content-type"] == "text/plain; charset=utf-8"

    assert login_event.action == "user.login.succeeded"
    not_found, not_allowed, listed, created, *bad_host = events
    assert (not_found.action, not_found.outcome) == ("http.post", "failure")
    assert (not_allowed.action, not_allowed.outcome) == ("http.delete", "failure")
    assert (listed.action, listed.outcome) == ("org.member.listed", "error")
    assert (created.action, created.outcome) == ("org.api_key.created", "error")
    if framework.checks_host:
        [refused] = bad_host
        assert (refused.action, refused.outcome) == ("user.login.failed", "failure")
        assert refused.target == Target("user", None)  # refused before the view read the body
    else:
        assert bad_host == []
    for event, status in zip(events, statuses, strict=True):
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


@WSGI_ONLY
def test_a_500_names_the_exception_class(framework: Framework, running: Running) -> None:
    """``error`` is "the exception class for outcome error, never its message" (README).

    The FastAPI version's event for the very same request says ``RuntimeError``.
    """
    with (
        running("wrapped", store=ExplodingStore.make()) as srv,
        capture_audit_events() as captured,
    ):
        responses = _error_requests(framework, srv.url)
        assert responses[3].status_code == 500
        events = wait_for(captured, len(responses))
        listed = next(e for e in events if e.action == "org.member.listed")
    assert listed.outcome == "error"
    assert DB_SECRET not in json.dumps(listed.to_dict())
    assert listed.error == ErrorInfo("RuntimeError")


# == d. the deployment line ===================================================================


def test_the_server_serves_the_one_line_app_from_the_environment(framework: Framework) -> None:
    """``uvicorn examples.saas_fastapi:app``, ``waitress-serve --call
    examples.saas_flask:wrapped_app`` (or ``examples.saas_flask:app``) and ``waitress-serve
    examples.saas_django.wsgi:application`` with SAAS_JWT_SECRET set: JSON events on stdout."""
    deployment = framework.deployment
    missing = run_without_secret(deployment.missing_secret_code())
    # Importing and building the app need no secret, but serving the one line does.
    assert missing.stdout.startswith("AuditConfigError"), missing.stdout + missing.stderr
    assert "SAAS_JWT_SECRET" in missing.stdout

    for target in deployment.targets:
        port = free_port()
        command = deployment.command(target, port)
        with serving(command, port, deployment.stop) as served, http_client(served.url) as c:
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
