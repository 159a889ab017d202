"""Helpers of the example SaaS API tests: one HTTP API, whatever framework serves it.

Nothing here knows which framework answers: :mod:`tests.examples.frameworks` holds what
differs between the FastAPI, Flask and Django versions, ``conftest.py`` the fixtures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt

from audit_middleware import AuditEvent, Target
from audit_middleware.testing import CapturedEvents
from examples.saas_domain import PasswordHasher, Store, User
from examples.saas_fastapi import RULES_FILE
from examples.scenario import Journal

ROOT = Path(__file__).resolve().parents[2]

SECRET = "tests-only-saas-jwt-secret-0123456789abcdef"  # >= 32 bytes: HS256 needs it
OTHER_SECRET = "an-attackers-own-signing-secret-0123456789"
AUDIT_ENV = {"SAAS_JWT_SECRET": SECRET}
UA = "saas-example-tests/1.0 (audit)"
# A cheap scrypt cost keeps the suite fast; the algorithm and code paths are the real ones.
FAST_HASHER = PasswordHasher(n=2**10)
ALICE = ("alice@acme.test", "correct horse battery")  # usr_1, owner of org_1
BOB = ("bob@acme.test", "hunter2hunter2")  # usr_2, member of org_1
CAROL = ("carol@globex.test", "tr0ub4dor&3")  # usr_3, owner of org_2
#: In the message of ExplodingStore's exception: it must reach neither a client nor an event.
DB_SECRET = "db-password-Sup3rS3cret"

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def seeded_store() -> Store:
    return Store.seeded(hasher=FAST_HASHER)


class ExplodingStore(Store):
    """A store whose member list and API key creation fail like a broken database: the views
    over them raise, and the framework answers 500."""

    def list_members(self, user: User, org_id: str) -> list[dict[str, Any]]:
        raise RuntimeError(f"connection to db refused (password={DB_SECRET})")

    def create_api_key(self, user: User, org_id: str, name: str) -> dict[str, Any]:
        raise RuntimeError(f"connection to db refused (password={DB_SECRET})")

    @classmethod
    def make(cls) -> ExplodingStore:
        store = cls.seeded(hasher=FAST_HASHER)
        assert isinstance(store, ExplodingStore)
        return store


def http_client(url: str) -> httpx.Client:
    """A client of the server at ``url`` that names itself with :data:`UA`."""
    return httpx.Client(base_url=url, headers={"user-agent": UA}, timeout=10)


# -- tokens -----------------------------------------------------------------------------------


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


# -- comparing answers ------------------------------------------------------------------------

Snapshot = tuple[int, list[tuple[str, str]], Any]
Answer = tuple[str, str, Snapshot]


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


def snapshot(response: httpx.Response) -> Snapshot:
    """Status, headers (minus date and server) and body (JSON with placeholders for secrets)."""
    headers = [
        (k.lower(), v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("date", "server")
    ]
    body: Any = response.content
    if response.content and response.headers.get("content-type") == "application/json":
        body = _normalize(response.json())
    return response.status_code, headers, body


def chunks(*parts: bytes) -> Iterator[bytes]:
    """A request body sent with chunked transfer encoding."""
    yield from parts


def request_sequence(url: str) -> list[Answer]:
    """A fixed sequence of good and bad requests; returns (method, path, snapshot) triples."""
    seen: list[Answer] = []
    tokens: dict[str, str] = {}
    with http_client(url) as c:

        def send(method: str, path: str, as_: str | None = None, **kw: Any) -> httpx.Response:
            headers = dict(kw.pop("headers", {}))
            if as_ is not None:
                headers["authorization"] = f"Bearer {tokens.get(as_, as_)}"
            response = c.request(method, path, headers=headers, **kw)
            seen.append((method, path, snapshot(response)))
            return response

        def log_in(name: str, email: str, password: str) -> None:
            response = send("POST", "/auth/login", json={"email": email, "password": password})
            tokens[name] = response.json()["access_token"]

        dave = {"email": "dave@initech.test", "password": "daves-password", "name": "Dave"}
        send("GET", "/health")
        send("POST", "/auth/register", json=dave)
        send("POST", "/auth/register", json=dave)
        send("POST", "/auth/register", json={**dave, "email": "nope"})
        send("POST", "/auth/register", json={**dave, "name": 42})
        send("POST", "/auth/login", json={"email": ALICE[0], "password": "wrong-password"})
        send("POST", "/auth/login", json={"email": "nobody@x.test", "password": "whatever"})
        log_in("alice", *ALICE)
        log_in("bob", *BOB)
        log_in("dave", dave["email"], dave["password"])
        send("POST", "/auth/login", content=b"email=alice%40acme.test&password=pw", headers=FORM)
        send("POST", "/auth/login", content=b"{not json", headers=JSON)
        send("POST", "/auth/login", content=b"\xff\xfe{", headers=JSON)  # not even text
        send("POST", "/auth/login", content=json.dumps({"email": ALICE[0], "password": "x"}))
        send("POST", "/auth/login", content=b"", headers=JSON)
        send("POST", "/auth/login", json={"password": ALICE[1]})
        send("POST", "/auth/login", json={"email": ALICE[0], "password": "x", "pad": "y" * 200_000})
        send(
            "POST",
            "/auth/login",
            content=chunks(
                b'{"email": "alice@acme.test", ', b'"password": "correct horse battery"}'
            ),
            headers=JSON,
        )
        send("POST", "/orgs", content=b"{not json", headers=JSON)  # before authentication
        send("POST", "/orgs", "dave", content=b"name=Initech", headers=FORM)
        send("POST", "/orgs", "dave", json={"name": "Initech"})
        send("POST", "/orgs", "dave", json={"name": "Ünïcødé Ørg ✓"})
        send("PATCH", "/orgs/org_1/settings", "alice", json={"sso": True, "seats": 10})
        send("PATCH", "/orgs/org_1/settings", "alice", json={"ratio": 0.5, "tags": ["a", None]})
        send("PATCH", "/orgs/org_1/settings", "alice", json=[1])
        send("PATCH", "/orgs/org_1/settings", "bob", json={"sso": False})
        send("PUT", "/orgs/org_1/feature-flags/beta", "alice", json={"enabled": True})
        send("PUT", "/orgs/org_1/feature-flags/beta", "alice", json={"enabled": "yes"})
        send("PUT", "/orgs/org_1/feature-flags/Not A Flag", "alice", json={"enabled": False})
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
        send("POST", "/health", content=chunks(b"streamed ", b"body"))
        send("DELETE", "/orgs")
        send("GET", "/no-such-route")
        send("POST", "/no-such-route", json={"email": ALICE[0]})
        send("POST", "/me/2fa/enable", BAD_TOKENS["forged"]())
        send("POST", "/me/2fa/enable", BAD_TOKENS["alg_none"]())
        send("POST", "/me/2fa/enable", headers={"authorization": "Basic YWxpY2U6cHc="})
        send("POST", "/auth/logout", "alice")
        send("POST", "/me/2fa/enable", "alice")  # revoked
        send("POST", "/auth/logout")
    return seen


def audited_count(answers: Sequence[Answer]) -> int:
    """How many of ``answers`` the rules audit: every non-GET, and the named member list."""
    return sum(1 for method, path, _ in answers if method != "GET" or path.endswith("/members"))


def assert_same_answers_as_fastapi(answers: list[Answer], reference: list[Answer]) -> None:
    """Same statuses, bodies, content types and ``WWW-Authenticate`` as the FastAPI version.

    The one exception: FastAPI describes a malformed body with pydantic's list of errors, the
    Flask and Django versions with one ``{"detail": "..."}`` message (same status, 422).
    """
    assert [a[:2] for a in answers] == [r[:2] for r in reference]
    for (method, path, ours), (_, _, theirs) in zip(answers, reference, strict=True):
        (status, headers, body), (ref_status, ref_headers, ref_body) = ours, theirs
        where = f"{method} {path}: {body!r:.120} vs FastAPI {ref_body!r:.120}"
        assert status == ref_status, where
        if isinstance(ref_body, dict) and isinstance(ref_body.get("detail"), list):
            assert status == 422, where
            assert isinstance(body, dict), where
            assert list(body) == ["detail"], where
            assert isinstance(body["detail"], str), where
        else:
            assert body == ref_body, where
        if body:
            assert dict(headers).get("content-type") == dict(ref_headers).get("content-type"), where
        auth = dict(headers).get("www-authenticate")
        assert auth == dict(ref_headers).get("www-authenticate"), where


# -- events -----------------------------------------------------------------------------------


def wait_for(events: CapturedEvents, n: int, timeout: float = 5.0) -> list[AuditEvent]:
    """Events are captured when a request *ends*, just after the client got its response."""
    deadline = time.monotonic() + timeout
    while len(events) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} events, got {events.actions}")
        time.sleep(0.005)
    return sorted(events, key=lambda e: e.occurred_at)  # request start order


EVERY_ACTION = {
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


#: (method, route template) of every rule of the rules file.
RULE_ROUTES = {(r["method"], r["route"]) for r in tomllib.loads(RULES_FILE.read_text())["rule"]}


def _parse_time(stamp: str) -> datetime:
    assert stamp.endswith("Z"), stamp
    return datetime.fromisoformat(stamp)


def assert_scenario_events(
    journal: Journal, events: list[AuditEvent], started: datetime, finished: datetime
) -> None:
    """Every step of the scenario produced its expected event, field by field, secret-free."""
    assert [e.action for e in events] == [x.action for x in journal.expected]
    assert {x.action for x in journal.expected} == EVERY_ACTION
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
        # The framework's route template (Starlette's route path, Flask's url_rule, Django's
        # resolver), as the rule has it.
        route = event.request.route
        assert (step.method, route) in RULE_ROUTES, where
        assert route is not None
        assert re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", route), step.path), where
        assert event.error is None, where

    # Nothing secret anywhere: passwords, access tokens, API key secrets.
    assert len(journal.secrets) == 4 + 3 + 1
    for event in events:
        text = json.dumps(event.to_dict())
        for secret in journal.secrets:
            assert secret not in text, f"{event.action} leaks a secret"


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- odd requests -----------------------------------------------------------------------------

#: Login bodies a client might send; none logs anyone in ("a-wrong-password").
LOGIN_BODIES: dict[str, dict[str, Any]] = {
    "huge_json": {
        "json": {"email": ALICE[0], "password": "a-wrong-password", "pad": "x" * 200_000}
    },
    "form_not_json": {
        "content": b"email=alice%40acme.test&password=a-wrong-password",
        "headers": FORM,
    },
    "garbage": {"content": b"\x00\xff{password=a-wrong-password", "headers": JSON},
    "not_text": {"content": b"\xff\xfe{password=a-wrong-password", "headers": JSON},
    "no_content_type": {"content": b'{"email": "alice@acme.test", "password": "a-wrong-password"}'},
    "missing_email": {"json": {"password": "a-wrong-password"}},
    "streamed": {
        "content": [b'{"email": "alice@acme.test",', b' "password": "a-wrong-password"}'],
        "headers": JSON,
    },
}

#: Bodies sent to routes that never read one.
NEVER_READ: dict[str, dict[str, Any]] = {
    "json": {"json": {"unexpected": "body"}},
    "large": {"content": b"x" * 300_000},
    "streamed": {"content": [b"never ", b"read ", b"by the app"]},
}


def post_body(url: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """POST ``body`` (httpx keyword arguments; a list ``content`` is sent chunked) to ``path``."""
    kwargs = dict(body)
    if isinstance(kwargs.get("content"), list):
        kwargs["content"] = chunks(*kwargs["content"])  # a chunked, streamed body
    kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
    with http_client(url) as c:
        return c.post(path, **kwargs)


# -- the deployment line ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """The process environment without audit or app settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_LOG_", "SAAS_"))}


def run_without_secret(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter without ``SAAS_JWT_SECRET``."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_environ(),
        cwd=ROOT,
        timeout=60,
        check=True,
    )


@dataclass
class Served:
    """A server process; ``stdout``/``stderr`` are filled in once it has stopped."""

    url: str
    stdout: str = ""
    stderr: str = ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the ``log`` exporter wrote to stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def serving(command: Sequence[str], port: int, stop: signal.Signals) -> Iterator[Served]:
    """Run the server ``command`` (listening on ``port``) with ``SAAS_JWT_SECRET`` set.

    Stopped with the signal ``stop`` that makes that server flush the audit pipeline.
    """
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**clean_environ(), "SAAS_JWT_SECRET": SECRET},
        cwd=ROOT,
        # A shell starts background jobs with SIGINT ignored, and a Python started so ignores
        # Ctrl-C for good: give the server the default back, so that SIGINT stops it.
        preexec_fn=_default_sigint,
    )
    served = Served(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 20
        with http_client(served.url) as c:
            while True:
                try:
                    c.get("/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        yield served
    finally:
        proc.send_signal(stop)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(
                f"{' '.join(command)} did not stop within 20 s of {stop.name}; its stderr:\n"
                + err.decode(errors="replace")[-3000:]
            ) from None
        served.stdout, served.stderr = out.decode(), err.decode()
