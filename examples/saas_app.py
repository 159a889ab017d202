"""A small multi-tenant SaaS API (FastAPI) wrapped in one line by ``AuditMiddleware``.

Users authenticate with ``POST /auth/login`` and send the returned token as a bearer token;
Starlette's ``AuthenticationMiddleware`` puts the user in ``scope["user"]``, where the
middleware's built-in resolver finds it. Nothing here calls the audit library except the
one-line wrap at the bottom, one ``set_target`` and one explicit ``record``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

import audit_middleware
from audit_middleware import AuditMiddleware, Rule

__all__ = ["RULES", "Store", "create_app", "wrapped_app"]


@dataclass
class User(BaseUser):
    """A member of one organization."""

    id: str
    email: str
    password: str
    org_id: str
    role: str = "member"

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.email

    @property
    def identity(self) -> str:
        return self.id


@dataclass
class Store:
    """In-memory state of the example app."""

    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    api_keys: dict[str, dict[str, str]] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def seeded(cls) -> Store:
        store = cls()
        for user in (
            User("u_alice", "alice@acme.test", "correct horse", "org_acme", "admin"),
            User("u_bob", "bob@acme.test", "hunter2", "org_acme"),
            User("u_carol", "carol@globex.test", "tr0ub4dor", "org_globex", "admin"),
        ):
            store.users[user.id] = user
        return store


class TokenBackend(AuthenticationBackend):
    """Bearer tokens issued by ``/auth/login``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        user_id = self.store.tokens.get(token) if scheme.lower() == "bearer" else None
        if user_id is None:
            return None
        return AuthCredentials(["authenticated"]), self.store.users[user_id]


#: Action rules for this app: method + route template → action, target, org.
RULES = [
    Rule(
        "POST",
        "/auth/login",
        {
            "success": "user.login.succeeded",
            "denied": "user.login.failed",
            "4xx": "user.login.failed",
        },
    ),
    Rule("POST", "/auth/logout", "user.logout"),
    Rule(
        "POST",
        "/orgs/{org_id}/api-keys",
        "org.api_key.created",
        target_type="api_key",
        target_id="response.id",
    ),
    Rule(
        "DELETE",
        "/orgs/{org_id}/api-keys/{key_id}",
        "org.api_key.deleted",
        "api_key",
        "path.key_id",
    ),
    Rule(
        "PATCH",
        "/orgs/{org_id}/settings",
        "org.settings.updated",
        target_type="org",
        target_id="path.org_id",
    ),
    Rule("GET", "/orgs/{org_id}/api-keys", "org.api_key.listed"),
    Rule("POST", "/internal/cache/flush", None),
]


def _member(request: Request, org_id: str) -> User:
    user = request.scope.get("user")
    if not isinstance(user, User):
        raise HTTPException(401, "authentication required")
    if user.org_id != org_id:
        raise HTTPException(403, "not a member of this organization")
    return user


def create_app(store: Store | None = None) -> FastAPI:
    """The unwrapped application."""
    store = store or Store.seeded()
    app = FastAPI(middleware=[Middleware(AuthenticationMiddleware, backend=TokenBackend(store))])

    @app.post("/auth/login")
    async def login(body: dict[str, str]) -> dict[str, str]:
        for user in store.users.values():
            if user.email == body.get("email") and user.password == body.get("password"):
                token = secrets.token_urlsafe(16)
                store.tokens[token] = user.id
                audit_middleware.set_actor(user.id, email=user.email)
                audit_middleware.set_org(user.org_id)
                return {"token": token}
        raise HTTPException(401, "invalid credentials")

    @app.post("/auth/logout")
    async def logout(request: Request) -> dict[str, bool]:
        _, _, token = request.headers.get("authorization", "").partition(" ")
        store.tokens.pop(token, None)
        return {"ok": True}

    @app.get("/orgs/{org_id}/api-keys")
    def list_keys(org_id: str, request: Request) -> list[dict[str, str]]:
        _member(request, org_id)
        return [k for k in store.api_keys.values() if k["org_id"] == org_id]

    @app.post("/orgs/{org_id}/api-keys", status_code=201)
    def create_key(org_id: str, request: Request, body: dict[str, str]) -> dict[str, str]:
        _member(request, org_id)
        key = {"id": "key_" + secrets.token_hex(4), "org_id": org_id, "name": body.get("name", "")}
        store.api_keys[key["id"]] = key
        return {**key, "secret": "sk_live_" + secrets.token_hex(12)}

    @app.delete("/orgs/{org_id}/api-keys/{key_id}", status_code=204)
    def delete_key(org_id: str, key_id: str, request: Request) -> None:
        _member(request, org_id)
        if store.api_keys.pop(key_id, None) is None:
            raise HTTPException(404, "no such key")

    @app.patch("/orgs/{org_id}/settings")
    async def update_settings(
        org_id: str, request: Request, body: dict[str, Any]
    ) -> dict[str, Any]:
        user = _member(request, org_id)
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        store.settings.setdefault(org_id, {}).update(body)
        audit_middleware.add_metadata(changed=sorted(body))
        return store.settings[org_id]

    @app.post("/orgs/{org_id}/exports")
    async def export_data(org_id: str, request: Request) -> dict[str, str]:
        user = _member(request, org_id)
        audit_middleware.record(
            "org.data_export.requested",
            target=audit_middleware.Target("org", org_id),
            metadata={"requested_by_role": user.role},
        )
        return {"status": "queued"}

    @app.post("/internal/cache/flush")
    async def flush_cache() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def wrapped_app(store: Store | None = None, **options: Any) -> AuditMiddleware:
    """The application wrapped in one line (options go to :class:`audit_middleware.Auditor`)."""
    return AuditMiddleware(create_app(store), rules=RULES, **options)
