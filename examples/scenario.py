"""Drive every call of the example SaaS HTTP API once, over HTTP only, and journal it.

:func:`drive_all_events` is framework-agnostic: it talks to a running server through its public
HTTP API (see ``examples/saas_fastapi.py``), so it works unchanged against the FastAPI, Flask
and Django versions of the app. It registers its own users (their emails carry a run id, so
the scenario can run repeatedly against one server), and returns a :class:`Journal`: the ids
the server handed out, the secrets that were used (which must never appear in an audit event),
and, in order, the audit event each step should produce under ``examples/audit-rules.toml``.

Run it against a server: ``python -m examples.scenario http://127.0.0.1:8000``.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

__all__ = ["Expected", "Journal", "ScenarioError", "Step", "drive_all_events"]


class Expected(NamedTuple):
    """The audit event one request should produce."""

    action: str
    outcome: str
    actor_id: str | None
    target_type: str | None
    target_id: str | None
    org_id: str | None


@dataclass(frozen=True)
class Step:
    """One request of the scenario and what it should produce.

    ``expected`` is None for requests that are not audited (``GET /health``). ``actor_email``
    is the email the event's actor should carry (from the token, or the reset request body).
    ``metadata`` lists metadata entries the event should contain.
    """

    method: str
    path: str
    status: int
    expected: Expected | None
    actor_email: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Journal:
    """What :func:`drive_all_events` did."""

    base_url: str
    user_agent: str
    run_id: str
    owner_id: str = ""
    owner_email: str = ""
    member_id: str = ""
    member_email: str = ""
    org_id: str = ""
    key_id: str = ""
    invitation_id: str = ""
    flag: str = "audit_export"
    passwords: list[str] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    api_key_secrets: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def expected(self) -> list[Expected]:
        """The expected audit events, in request order."""
        return [s.expected for s in self.steps if s.expected is not None]

    @property
    def audited_steps(self) -> list[Step]:
        """The steps that produce an audit event, in request order."""
        return [s for s in self.steps if s.expected is not None]

    @property
    def secrets(self) -> list[str]:
        """Every password, access token and API key secret used: none may be audited."""
        return [*self.passwords, *self.access_tokens, *self.api_key_secrets]


class ScenarioError(RuntimeError):
    """The server answered a step with an unexpected status."""


class _Driver:
    """Sends requests, checks their status and journals them."""

    def __init__(self, client: httpx.Client, journal: Journal) -> None:
        self.client = client
        self.journal = journal
        self.token_emails: dict[str, str] = {}  # access token -> its user's email
        self._last_email: str | None = None

    def login(self, email: str, password: str) -> str:
        """Log in; return the access token (journaled as a secret)."""
        body = {"email": email, "password": password}
        token: str = self.call("POST", "/auth/login", 200, json=body)["access_token"]
        self.journal.access_tokens.append(token)
        self.token_emails[token] = email
        return token

    def call(
        self, method: str, path: str, status: int, *, json: Any = None, token: str | None = None
    ) -> Any:
        """Send one request; fail unless it answers ``status``; return the JSON body, if any."""
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        self._last_email = None if token is None else self.token_emails.get(token)
        response = self.client.request(method, path, json=json, headers=headers)
        if response.status_code != status:
            raise ScenarioError(
                f"{method} {path}: expected {status}, got {response.status_code}: "
                f"{response.text[:200]}"
            )
        self.journal.steps.append(Step(method, path, status, None))
        return response.json() if response.content else None

    def expect(
        self,
        action: str,
        outcome: str,
        actor_id: str | None,
        target: tuple[str, str | None],
        org_id: str | None,
        *,
        actor_email: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Record the audit event the last request should have produced.

        ``actor_email`` defaults to the email of the bearer token the request carried.
        """
        last = self.journal.steps[-1]
        self.journal.steps[-1] = Step(
            last.method,
            last.path,
            last.status,
            Expected(action, outcome, actor_id, target[0], target[1], org_id),
            actor_email if actor_email is not None else self._last_email,
            dict(metadata or {}),
        )


def drive_all_events(
    base_url: str, *, user_agent: str, run_id: str | None = None, timeout: float = 10.0
) -> Journal:
    """Call every endpoint of the API once, in a realistic order; return the journal.

    The story: Dana and Erin sign up. Dana mistypes her password, logs in, creates the
    Initech organization, configures it (settings, a feature flag, an API key) and invites
    Erin, who logs in and accepts. Erin, a plain member, tries to delete the API key (403).
    Dana lists the members, promotes Erin, removes her, deletes the key, changes her password,
    logs in with the new one (that token now carries her organization), turns two-factor
    authentication on and off again and logs out. Someone asks for a password reset for
    Erin's address.

    ``run_id`` (default: random) goes into the emails and passwords, so the scenario can run
    repeatedly against one server. Raises :class:`ScenarioError` when the server answers a
    step with an unexpected status.
    """
    run = run_id or secrets.token_hex(4)
    journal = Journal(base_url, user_agent, run)
    dana_email = journal.owner_email = f"dana.{run}@initech.test"
    erin_email = journal.member_email = f"erin.{run}@initech.test"
    dana_pw, dana_new_pw = f"dana-{run}-Correct-Horse-1", f"dana-{run}-Battery-Staple-2"
    erin_pw, wrong_pw = f"erin-{run}-Tr0ub4dor-3", f"dana-{run}-Wrong-Guess-0"
    journal.passwords += [dana_pw, dana_new_pw, erin_pw, wrong_pw]
    flag = journal.flag
    body: dict[str, Any]

    with httpx.Client(
        base_url=base_url, headers={"user-agent": user_agent}, timeout=timeout
    ) as client:
        d = _Driver(client, journal)
        d.call("GET", "/health", 200)  # not audited: a read no rule names

        # Sign-ups: self-service, so each new account is its own actor.
        body = {"email": dana_email, "password": dana_pw, "name": "Dana Owner"}
        dana = journal.owner_id = d.call("POST", "/auth/register", 201, json=body)["id"]
        d.expect("user.registered", "success", dana, ("user", dana), None)
        body = {"email": erin_email, "password": erin_pw, "name": "Erin Member"}
        erin = journal.member_id = d.call("POST", "/auth/register", 201, json=body)["id"]
        d.expect("user.registered", "success", erin, ("user", erin), None)

        # A mistyped password (anonymous, global), then a good login (no organization yet).
        d.call("POST", "/auth/login", 401, json={"email": dana_email, "password": wrong_pw})
        d.expect("user.login.failed", "denied", None, ("user", dana_email), None)
        dana_token = d.login(dana_email, dana_pw)
        d.expect(
            "user.login.succeeded",
            "success",
            dana,
            ("user", dana_email),
            None,
            actor_email=dana_email,
        )

        # Dana creates and configures an organization.
        org = d.call("POST", "/orgs", 201, json={"name": "Initech"}, token=dana_token)["id"]
        journal.org_id = org
        d.expect("org.created", "success", dana, ("org", org), org)
        settings = {"sso_required": True, "session_timeout_minutes": 30}
        d.call("PATCH", f"/orgs/{org}/settings", 200, json=settings, token=dana_token)
        d.expect("org.settings.updated", "success", dana, ("org", org), org)
        body = {"enabled": True}
        d.call("PUT", f"/orgs/{org}/feature-flags/{flag}", 200, json=body, token=dana_token)
        d.expect(
            "org.feature_flag.updated",
            "success",
            dana,
            ("feature_flag", flag),
            org,
            metadata={"enabled": "true"},
        )
        created = d.call(
            "POST", f"/orgs/{org}/api-keys", 201, json={"name": "ci-deploy"}, token=dana_token
        )
        key = journal.key_id = created["id"]
        journal.api_key_secrets.append(created["secret"])
        d.expect(
            "org.api_key.created",
            "success",
            dana,
            ("api_key", key),
            org,
            metadata={"name": "ci-deploy"},
        )

        # Dana invites Erin, who logs in (no organization yet) and accepts.
        body = {"email": erin_email, "role": "member"}
        invitation = d.call("POST", f"/orgs/{org}/invitations", 201, json=body, token=dana_token)
        inv = journal.invitation_id = invitation["id"]
        d.expect(
            "org.invitation.sent",
            "success",
            dana,
            ("invitation", inv),
            org,
            metadata={"role": "member"},
        )
        erin_token = d.login(erin_email, erin_pw)
        d.expect(
            "user.login.succeeded",
            "success",
            erin,
            ("user", erin_email),
            None,
            actor_email=erin_email,
        )
        d.call("POST", f"/invitations/{inv}/accept", 200, token=erin_token)
        d.expect(
            "org.invitation.accepted",
            "success",
            erin,
            ("invitation", inv),
            org,
            metadata={"role": "member"},
        )

        # Erin is a plain member: deleting the API key is refused.
        d.call("DELETE", f"/orgs/{org}/api-keys/{key}", 403, token=erin_token)
        d.expect("org.api_key.deleted", "denied", erin, ("api_key", key), org)

        # Dana manages the members and the key.
        d.call("GET", f"/orgs/{org}/members", 200, token=dana_token)
        d.expect("org.member.listed", "success", dana, ("org", org), org)
        body = {"role": "admin"}
        d.call("PATCH", f"/orgs/{org}/members/{erin}", 200, json=body, token=dana_token)
        d.expect(
            "org.member.role_updated",
            "success",
            dana,
            ("user", erin),
            org,
            metadata={"role": "admin"},
        )
        d.call("DELETE", f"/orgs/{org}/members/{erin}", 204, token=dana_token)
        d.expect("org.member.removed", "success", dana, ("user", erin), org)
        d.call("DELETE", f"/orgs/{org}/api-keys/{key}", 204, token=dana_token)
        d.expect("org.api_key.deleted", "success", dana, ("api_key", key), org)

        # Dana's own account. Her first token has no org claim: these events are global.
        body = {"current_password": dana_pw, "new_password": dana_new_pw}
        d.call("POST", "/me/password", 204, json=body, token=dana_token)
        d.expect("user.password.changed", "success", dana, ("user", dana), None)
        dana_token = d.login(dana_email, dana_new_pw)
        d.expect(
            "user.login.succeeded",
            "success",
            dana,
            ("user", dana_email),
            org,
            actor_email=dana_email,
        )
        # The new token carries org_id: the org of the events below comes from it.
        d.call("POST", "/me/2fa/enable", 200, token=dana_token)
        d.expect("user.two_factor.enabled", "success", dana, ("user", dana), org)
        d.call("POST", "/me/2fa/disable", 200, json={"password": dana_new_pw}, token=dana_token)
        d.expect("user.two_factor.disabled", "success", dana, ("user", dana), org)

        # Someone asks to reset Erin's password: anonymous, named by the address asked for.
        d.call("POST", "/auth/password-reset", 202, json={"email": erin_email})
        d.expect(
            "user.password.reset_requested",
            "success",
            None,
            ("user", erin_email),
            None,
            actor_email=erin_email,
        )

        d.call("POST", "/auth/logout", 204, token=dana_token)
        d.expect("user.logout", "success", dana, ("user", dana), org)
    return journal


def main(argv: list[str]) -> int:
    """``python -m examples.scenario BASE_URL``: drive the scenario, print the journal."""
    if len(argv) != 2:
        print("usage: python -m examples.scenario BASE_URL", file=sys.stderr)
        return 2
    journal = drive_all_events(argv[1], user_agent="examples.scenario/1.0")
    for step in journal.steps:
        print(f"{step.status} {step.method:6} {step.path:45} {step.expected or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
