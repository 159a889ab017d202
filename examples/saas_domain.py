"""A framework-neutral, in-memory multi-tenant SaaS domain.

This module is the whole "business logic" of the example SaaS product: users, organizations,
memberships with roles, invitations, API keys, feature flags, org settings, password resets and
JWT access tokens. It imports no web framework and knows nothing about audit logging, so the
same :class:`Store` can sit behind thin FastAPI, Flask or Django layers that all expose the
same HTTP API (see ``examples/saas_fastapi.py`` for the reference web layer).

How a web layer uses it
=======================

* Build one :class:`Store` per application (``Store()`` empty, ``Store.seeded()`` for demos)
  and one :class:`TokenService` (``TokenService(jwt_secret())``).
* Turn the bearer token of a request into a user with
  :meth:`Store.authenticate` (``store.authenticate(tokens, token)``); it raises
  :class:`Unauthorized` for a missing, forged, expired or revoked token.
* Call the use-case methods of :class:`Store` with plain Python values. They return plain
  dictionaries ready to be serialized as JSON (the exact response bodies of the HTTP API).
* Every failure is a :class:`DomainError` subclass carrying the HTTP ``status`` to answer
  and a client-safe ``detail`` message. A web layer maps them in one place, e.g. to
  ``{"detail": error.detail}`` with ``error.status``, adding ``WWW-Authenticate: Bearer`` for
  401. Shapes (missing fields, wrong JSON types) are the web layer's job and also answer 422.
* Org-scoped use cases check in this order: unknown org (404), membership and role (403),
  then the input (422), then state conflicts (409). A caller who may not act learns nothing
  about what valid input would have looked like.

Identifiers come from per-kind counters (``usr_1``, ``org_1``, ``inv_1``, ``key_1``,
``pwr_1``), so the same sequence of calls always produces the same ids. Secrets (password
hashes, API key secrets, reset tokens, JWT ids) are random, as they must be.

All methods of :class:`Store` are thread-safe (one re-entrant lock), so sync handlers running
in a thread pool can share a store. State lives in memory only: this is an example, not a
database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeGuard

import jwt

__all__ = [
    "DEFAULT_JWT_SECRET",
    "JWT_AUDIENCE",
    "JWT_SECRET_ENV",
    "ROLES",
    "ApiKey",
    "Conflict",
    "DomainError",
    "Forbidden",
    "InvalidInput",
    "Invitation",
    "Membership",
    "NotFound",
    "Organization",
    "PasswordHasher",
    "PasswordResetRequest",
    "Role",
    "Store",
    "TokenService",
    "Unauthorized",
    "User",
    "jwt_secret",
]

#: Environment variable holding the HS256 signing secret of access tokens.
JWT_SECRET_ENV: Final = "SAAS_JWT_SECRET"
#: Used when ``SAAS_JWT_SECRET`` is unset. Development only: it is public, and at 25 bytes it
#: is shorter than the 32 bytes RFC 7518 asks of an HS256 key (PyJWT warns about it, and
#: verifiers that enforce the minimum refuse it). Always set ``SAAS_JWT_SECRET`` in production.
DEFAULT_JWT_SECRET: Final = "dev-only-secret-change-me-before-deploying"  # >= 32 bytes
#: The ``aud`` claim of every access token; tokens for any other audience are rejected.
JWT_AUDIENCE: Final = "saas-api"
JWT_ALGORITHM: Final = "HS256"
#: Lifetime of an access token, in seconds.
TOKEN_TTL_SECONDS: Final = 3600

Role = Literal["owner", "admin", "member"]
#: Roles in decreasing order of power. Owners and admins administer an organization.
ROLES: Final[tuple[Role, ...]] = ("owner", "admin", "member")
_ADMIN_ROLES: Final = frozenset({"owner", "admin"})
_INVITABLE_ROLES: Final = frozenset({"admin", "member"})

MIN_PASSWORD_LENGTH: Final = 8
MAX_PASSWORD_LENGTH: Final = 1024
MAX_NAME_LENGTH: Final = 200
MAX_SETTINGS: Final = 100
_EMAIL: Final = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}")
_FLAG: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_SETTING_KEY: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def jwt_secret(environ: Mapping[str, str] | None = None) -> str:
    """The token signing secret: ``SAAS_JWT_SECRET`` from ``environ`` (default: the process
    environment), else the development default :data:`DEFAULT_JWT_SECRET`."""
    env = os.environ if environ is None else environ
    return env.get(JWT_SECRET_ENV) or DEFAULT_JWT_SECRET


# -- errors -----------------------------------------------------------------------------------


class DomainError(Exception):
    """A failed use case. ``status`` is the HTTP status to answer, ``detail`` is client-safe."""

    status: int = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(DomainError):
    """Bad credentials, or a missing, invalid, expired or revoked access token (401)."""

    status = 401


class Forbidden(DomainError):
    """Authenticated, but not allowed: not a member, not an admin, wrong password (403)."""

    status = 403


class NotFound(DomainError):
    """No such resource, or not visible to the caller (404)."""

    status = 404


class Conflict(DomainError):
    """Duplicate or state conflict: email taken, already a member, last owner (409)."""

    status = 409


class InvalidInput(DomainError):
    """Semantically invalid input: malformed email, short password, unknown role (422)."""

    status = 422


# -- entities ---------------------------------------------------------------------------------


@dataclass
class User:
    """An account. ``email`` is stored lower-cased; the password only as a salted hash."""

    id: str
    email: str
    password_hash: str
    name: str
    two_factor: bool = False

    def public(self) -> dict[str, Any]:
        """The account as shown to clients (never the hash)."""
        return {"id": self.id, "email": self.email, "name": self.name}


@dataclass
class Organization:
    """A tenant: the customer company. Settings and feature flags are per organization."""

    id: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    feature_flags: dict[str, bool] = field(default_factory=dict)


@dataclass
class Membership:
    """A user's role in one organization."""

    org_id: str
    user_id: str
    role: Role


@dataclass
class Invitation:
    """An invitation of an email address into an organization with a role."""

    id: str
    org_id: str
    email: str
    role: Role
    invited_by: str
    status: Literal["pending", "accepted"] = "pending"

    def public(self) -> dict[str, Any]:
        """The invitation as shown to clients."""
        return {"id": self.id, "email": self.email, "role": self.role, "status": self.status}


@dataclass
class ApiKey:
    """An organization's API key. Only a SHA-256 of the secret is kept: it is shown once."""

    id: str
    org_id: str
    name: str
    secret_sha256: str
    created_by: str


@dataclass
class PasswordResetRequest:
    """A password reset link "sent" to a known account (kept in :attr:`Store.outbox`).

    Only a SHA-256 of the reset token is kept; the token itself would go out by email.
    """

    id: str
    user_id: str
    email: str
    token_sha256: str
    requested_at: float


# -- passwords and tokens ---------------------------------------------------------------------


@dataclass(frozen=True)
class PasswordHasher:
    """Salted scrypt password hashes, stored as ``scrypt$n$r$p$salt_hex$hash_hex``.

    The default cost (``n=2**14``) is the interactive-login recommendation; tests may pass a
    cheaper hasher. Verification reads the parameters from the stored hash, so hashes made
    with another cost still verify.
    """

    n: int = 2**14
    r: int = 8
    p: int = 1

    def hash(self, password: str) -> str:
        """A new salted hash of ``password``."""
        salt = secrets.token_bytes(16)
        digest = self._derive(password, salt, self.n, self.r, self.p)
        return f"scrypt${self.n}${self.r}${self.p}${salt.hex()}${digest.hex()}"

    def verify(self, password: str, stored: str) -> bool:
        """Whether ``password`` matches ``stored``, compared in constant time."""
        try:
            scheme, n, r, p, salt_hex, digest_hex = stored.split("$")
            if scheme != "scrypt":
                return False
            digest = self._derive(password, bytes.fromhex(salt_hex), int(n), int(r), int(p))
        except ValueError:
            return False
        return hmac.compare_digest(digest, bytes.fromhex(digest_hex))

    @staticmethod
    def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32
        )


class TokenService:
    """Issues and verifies HS256 access tokens (JWT) for the ``saas-api`` audience.

    Claims: ``sub`` (user id), ``email``, ``org_id`` (the user's first organization; absent
    when the user has none), ``iat``, ``exp`` (``iat`` + 1 hour), ``jti`` (random, used for
    revocation), ``aud``. ``clock`` returns UNIX seconds and exists for tests.
    """

    def __init__(
        self,
        secret: str,
        *,
        audience: str = JWT_AUDIENCE,
        ttl_seconds: int = TOKEN_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("the JWT secret must not be empty")
        self._secret = secret
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenService(audience={self.audience!r}, secret=<redacted>)"

    def issue(self, user: User, org_id: str | None) -> str:
        """A signed access token for ``user``."""
        now = int(self._clock())
        claims: dict[str, Any] = {
            "sub": user.id,
            "email": user.email,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": secrets.token_hex(16),
            "aud": self.audience,
        }
        if org_id is not None:
            claims["org_id"] = org_id
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def decode(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; :class:`Unauthorized` for anything else.

        Only HS256 with our secret is accepted (never ``alg: none``), and ``exp``, ``iat``,
        ``sub``, ``jti`` and the audience are required.
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                audience=self.audience,
                options={"require": ["exp", "iat", "sub", "jti", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
            raise Unauthorized("invalid token")
        return claims


# -- the store --------------------------------------------------------------------------------


def _is_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


class Store:
    """All state and use cases of the SaaS product. Every public method is thread-safe.

    Use cases that act on behalf of someone take the acting ``user`` (from
    :meth:`authenticate`) first, and check membership and role themselves.
    """

    def __init__(self, *, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self.users: dict[str, User] = {}
        self.orgs: dict[str, Organization] = {}
        self.memberships: list[Membership] = []
        self.invitations: dict[str, Invitation] = {}
        self.api_keys: dict[str, ApiKey] = {}
        self.reset_requests: dict[str, PasswordResetRequest] = {}
        #: Password reset requests "sent by email", in order (for demos and tests).
        self.outbox: list[PasswordResetRequest] = []
        self.revoked_jtis: set[str] = set()
        self._counters: dict[str, int] = {}
        self._lock = threading.RLock()
        # Verified against unknown emails so that a login takes as long either way.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    @classmethod
    def seeded(cls, *, hasher: PasswordHasher | None = None) -> Store:
        """A store with demo data (passwords are for demos only).

        * ``usr_1`` alice@acme.test / ``correct horse battery``: owner of ``org_1`` (Acme)
        * ``usr_2`` bob@acme.test / ``hunter2hunter2``: member of ``org_1``
        * ``usr_3`` carol@globex.test / ``tr0ub4dor&3``: owner of ``org_2`` (Globex)
        """
        store = cls(hasher=hasher)
        alice = store.register("alice@acme.test", "correct horse battery", "Alice Admin")
        bob = store.register("bob@acme.test", "hunter2hunter2", "Bob Builder")
        carol = store.register("carol@globex.test", "tr0ub4dor&3", "Carol Chief")
        acme = store.create_org(store.users[alice["id"]], "Acme")
        store.create_org(store.users[carol["id"]], "Globex")
        with store._lock:
            store.memberships.append(Membership(acme["id"], bob["id"], "member"))
        return store

    def _next_id(self, kind: str) -> str:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return f"{kind}_{self._counters[kind]}"

    # -- lookups ------------------------------------------------------------------------------

    def _user_by_email(self, email: str) -> User | None:
        wanted = email.strip().lower()
        return next((u for u in self.users.values() if u.email == wanted), None)

    def _membership(self, org_id: str, user_id: str) -> Membership | None:
        return next(
            (m for m in self.memberships if m.org_id == org_id and m.user_id == user_id), None
        )

    def _first_org(self, user_id: str) -> str | None:
        return next((m.org_id for m in self.memberships if m.user_id == user_id), None)

    def _org(self, org_id: str) -> Organization:
        org = self.orgs.get(org_id)
        if org is None:
            raise NotFound("organization not found")
        return org

    def _require_member(self, user: User, org_id: str) -> Membership:
        """The caller's membership; 404 for an unknown org, 403 for a non-member."""
        self._org(org_id)
        membership = self._membership(org_id, user.id)
        if membership is None:
            raise Forbidden("not a member of this organization")
        return membership

    def _require_admin(self, user: User, org_id: str) -> Membership:
        membership = self._require_member(user, org_id)
        if membership.role not in _ADMIN_ROLES:
            raise Forbidden("organization admins only")
        return membership

    def is_admin(self, user: User, org_id: str) -> bool:
        """Whether ``user`` is an owner or admin of ``org_id`` (False for an unknown org)."""
        with self._lock:
            membership = self._membership(org_id, user.id) if org_id in self.orgs else None
        return membership is not None and membership.role in _ADMIN_ROLES

    def _owners(self, org_id: str) -> int:
        return sum(1 for m in self.memberships if m.org_id == org_id and m.role == "owner")

    # -- validation ---------------------------------------------------------------------------

    @staticmethod
    def _valid_email(email: str) -> str:
        normalized = email.strip().lower()
        if len(normalized) > 320 or not _EMAIL.fullmatch(normalized):
            raise InvalidInput("invalid email address")
        return normalized

    @staticmethod
    def _valid_password(password: str) -> str:
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise InvalidInput(
                f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
            )
        return password

    @staticmethod
    def _valid_name(name: str, what: str) -> str:
        cleaned = name.strip()
        if not cleaned or len(cleaned) > MAX_NAME_LENGTH:
            raise InvalidInput(f"{what} must be 1 to {MAX_NAME_LENGTH} characters")
        return cleaned

    @staticmethod
    def _valid_role(role: str, allowed: frozenset[str] | tuple[str, ...]) -> Role:
        for candidate in ROLES:
            if role == candidate and role in allowed:
                return candidate
        raise InvalidInput(f"role must be one of {', '.join(r for r in ROLES if r in allowed)}")

    # -- accounts and sessions ----------------------------------------------------------------

    def register(self, email: str, password: str, name: str) -> dict[str, Any]:
        """Create an account → ``{id, email, name}``; 409 if the email is taken."""
        email = self._valid_email(email)
        password = self._valid_password(password)
        name = self._valid_name(name, "name")
        password_hash = self.hasher.hash(password)  # slow: outside the lock
        with self._lock:
            if self._user_by_email(email) is not None:
                raise Conflict("email already registered")
            user = User(self._next_id("usr"), email, password_hash, name)
            self.users[user.id] = user
            return user.public()

    def login(self, tokens: TokenService, email: str, password: str) -> dict[str, Any]:
        """Check credentials → ``{access_token, token_type}``; 401 for any mismatch."""
        with self._lock:
            user = self._user_by_email(email)
            stored = user.password_hash if user is not None else self._dummy_hash
        if not self.hasher.verify(password, stored) or user is None:
            raise Unauthorized("invalid email or password")
        with self._lock:
            org_id = self._first_org(user.id)
        return {"access_token": tokens.issue(user, org_id), "token_type": "bearer"}

    def authenticate(self, tokens: TokenService, token: str | None) -> User:
        """The user of a bearer token; 401 if missing, invalid, expired, revoked or orphaned."""
        if not token:
            raise Unauthorized("authentication required")
        claims = tokens.decode(token)
        with self._lock:
            if claims["jti"] in self.revoked_jtis:
                raise Unauthorized("token revoked")
            user = self.users.get(claims["sub"])
        if user is None:
            raise Unauthorized("invalid token")
        return user

    def logout(self, tokens: TokenService, token: str) -> None:
        """Revoke the token's ``jti``: it is refused from now on (until it would expire)."""
        claims = tokens.decode(token)
        with self._lock:
            self.revoked_jtis.add(claims["jti"])

    def request_password_reset(self, email: str) -> None:
        """Queue a reset link for a known account; silently nothing for an unknown one.

        Callers answer the same either way, so the endpoint cannot enumerate accounts.
        """
        with self._lock:
            user = self._user_by_email(email)
            if user is None:
                return
            token = secrets.token_urlsafe(32)
            request = PasswordResetRequest(
                self._next_id("pwr"),
                user.id,
                user.email,
                hashlib.sha256(token.encode()).hexdigest(),
                time.time(),
            )
            self.reset_requests[request.id] = request
            self.outbox.append(request)

    def change_password(self, user: User, current_password: str, new_password: str) -> None:
        """Replace the password; 403 if ``current_password`` is wrong, 422 if the new one is bad.

        Existing access tokens stay valid until they expire (a simplification of this example).
        """
        if not self.hasher.verify(current_password, user.password_hash):
            raise Forbidden("current password is incorrect")
        new_hash = self.hasher.hash(self._valid_password(new_password))
        with self._lock:
            user.password_hash = new_hash

    def enable_two_factor(self, user: User) -> dict[str, Any]:
        """Turn on two-factor authentication → ``{two_factor: true}``.

        Enrolling an authenticator (TOTP secret, recovery codes) is out of this example's scope.
        """
        with self._lock:
            user.two_factor = True
        return {"two_factor": True}

    def disable_two_factor(self, user: User, password: str) -> dict[str, Any]:
        """Turn off two-factor authentication, re-checking the password (403 if wrong)."""
        if not self.hasher.verify(password, user.password_hash):
            raise Forbidden("password is incorrect")
        with self._lock:
            user.two_factor = False
        return {"two_factor": False}

    # -- organizations ------------------------------------------------------------------------

    def create_org(self, user: User, name: str) -> dict[str, Any]:
        """Create an organization owned by ``user`` → ``{id, name}``."""
        name = self._valid_name(name, "organization name")
        with self._lock:
            org = Organization(self._next_id("org"), name)
            self.orgs[org.id] = org
            self.memberships.append(Membership(org.id, user.id, "owner"))
            return {"id": org.id, "name": org.name}

    def update_settings(
        self, user: User, org_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``changes`` into the org's settings (admins) → all settings.

        Keys are lowercase identifiers; values are JSON values (``null`` stores ``null``).
        """
        with self._lock:
            self._require_admin(user, org_id)
            if not all(_is_str(k) and _SETTING_KEY.fullmatch(k) for k in changes):
                raise InvalidInput("setting names must be lowercase identifiers")
            org = self._org(org_id)
            if len({*org.settings, *changes}) > MAX_SETTINGS:
                raise InvalidInput(f"at most {MAX_SETTINGS} settings")
            org.settings.update(changes)
            return dict(org.settings)

    def set_feature_flag(self, user: User, org_id: str, flag: str, enabled: bool) -> dict[str, Any]:
        """Turn a feature flag on or off for the org (admins) → ``{flag, enabled}``."""
        with self._lock:
            self._require_admin(user, org_id)
            if not _FLAG.fullmatch(flag):
                raise InvalidInput("flag names are lowercase letters, digits, '_' and '-'")
            self._org(org_id).feature_flags[flag] = enabled
            return {"flag": flag, "enabled": enabled}

    # -- API keys -----------------------------------------------------------------------------

    def create_api_key(self, user: User, org_id: str, name: str) -> dict[str, Any]:
        """Create an API key (admins) → ``{id, name, secret}``; the secret is never shown again."""
        with self._lock:
            self._require_admin(user, org_id)
            name = self._valid_name(name, "API key name")
            secret = "sk_" + secrets.token_urlsafe(32)
            key = ApiKey(
                self._next_id("key"),
                org_id,
                name,
                hashlib.sha256(secret.encode()).hexdigest(),
                user.id,
            )
            self.api_keys[key.id] = key
            return {"id": key.id, "name": key.name, "secret": secret}

    def delete_api_key(self, user: User, org_id: str, key_id: str) -> None:
        """Delete an API key of the org (admins); 404 if the org has no such key."""
        with self._lock:
            self._require_admin(user, org_id)
            key = self.api_keys.get(key_id)
            if key is None or key.org_id != org_id:
                raise NotFound("API key not found")
            del self.api_keys[key_id]

    # -- invitations and members --------------------------------------------------------------

    def invite(self, user: User, org_id: str, email: str, role: str) -> dict[str, Any]:
        """Invite an email address as ``admin`` or ``member`` (admins) → the invitation.

        409 if that address already belongs to a member or has a pending invitation.
        """
        with self._lock:
            self._require_admin(user, org_id)
            email = self._valid_email(email)
            valid_role = self._valid_role(role, tuple(sorted(_INVITABLE_ROLES)))
            invitee = self._user_by_email(email)
            if invitee is not None and self._membership(org_id, invitee.id) is not None:
                raise Conflict("already a member")
            if any(
                i.org_id == org_id and i.email == email and i.status == "pending"
                for i in self.invitations.values()
            ):
                raise Conflict("an invitation is already pending for this email")
            invitation = Invitation(self._next_id("inv"), org_id, email, valid_role, user.id)
            self.invitations[invitation.id] = invitation
            return invitation.public()

    def accept_invitation(self, user: User, invitation_id: str) -> dict[str, Any]:
        """Join the org of a pending invitation addressed to ``user`` → ``{org_id, role}``.

        404 for an unknown invitation, 403 if it is addressed to another email, 409 if it is
        no longer pending or the user is already a member.
        """
        with self._lock:
            invitation = self.invitations.get(invitation_id)
            if invitation is None:
                raise NotFound("invitation not found")
            if invitation.email != user.email:
                raise Forbidden("this invitation is addressed to another email")
            if invitation.status != "pending":
                raise Conflict("invitation already accepted")
            if self._membership(invitation.org_id, user.id) is not None:
                raise Conflict("already a member")
            invitation.status = "accepted"
            self.memberships.append(Membership(invitation.org_id, user.id, invitation.role))
            return {"org_id": invitation.org_id, "role": invitation.role}

    def list_members(self, user: User, org_id: str) -> list[dict[str, Any]]:
        """The org's members (members only) → ``[{user_id, email, name, role}]``."""
        with self._lock:
            self._require_member(user, org_id)
            return [
                {
                    "user_id": m.user_id,
                    "email": self.users[m.user_id].email,
                    "name": self.users[m.user_id].name,
                    "role": m.role,
                }
                for m in self.memberships
                if m.org_id == org_id
            ]

    def change_role(self, user: User, org_id: str, member_id: str, role: str) -> dict[str, Any]:
        """Change a member's role (admins) → ``{user_id, role}``.

        Only owners grant or take away the owner role (403); the last owner cannot be demoted
        (409); 404 if ``member_id`` is not a member.
        """
        with self._lock:
            mine = self._require_admin(user, org_id)
            new_role = self._valid_role(role, ROLES)
            target = self._membership(org_id, member_id)
            if target is None:
                raise NotFound("member not found")
            if "owner" in (new_role, target.role) and mine.role != "owner":
                raise Forbidden("only owners change the owner role")
            if target.role == "owner" and new_role != "owner" and self._owners(org_id) == 1:
                raise Conflict("an organization needs at least one owner")
            target.role = new_role
            return {"user_id": member_id, "role": new_role}

    def remove_member(self, user: User, org_id: str, member_id: str) -> None:
        """Remove a member (admins); owners are removed by owners only, never the last one."""
        with self._lock:
            mine = self._require_admin(user, org_id)
            target = self._membership(org_id, member_id)
            if target is None:
                raise NotFound("member not found")
            if target.role == "owner":
                if mine.role != "owner":
                    raise Forbidden("only owners remove owners")
                if self._owners(org_id) == 1:
                    raise Conflict("an organization needs at least one owner")
            self.memberships.remove(target)
