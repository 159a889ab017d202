"""The example SaaS HTTP API on FastAPI: an existing app, written without audit logging in mind.

Everything in :func:`create_app` is plain FastAPI over :mod:`examples.saas_domain`; it never
imports the audit library. Audit events come from ONE line at the bottom of this module plus
the rules file next to it (``examples/audit-rules.toml``)::

    app = AuditMiddleware(create_app(), rules_file=RULES_FILE)

Run it with ``SAAS_JWT_SECRET`` set to a secret of at least 32 bytes (the app signs access
tokens with it, and the middleware verifies bearer tokens with the same secret)::

    SAAS_JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \\
        uvicorn examples.saas_fastapi:app

HTTP API (JSON bodies; "bearer" means ``Authorization: Bearer <access_token>``; errors are
``{"detail": ...}`` with the status of the :class:`~examples.saas_domain.DomainError`, and
422 for a malformed body):

- ``POST /auth/register`` {email, password, name} → 201 {id, email, name}; 409 email taken
- ``POST /auth/login`` {email, password} → 200 {access_token, token_type: "bearer"}; 401
- ``POST /auth/logout`` (bearer) → 204; the token is revoked
- ``POST /auth/password-reset`` {email} → 202 {status: "sent"}, whether or not it exists
- ``POST /me/password`` (bearer) {current_password, new_password} → 204; 403 wrong password
- ``POST /me/2fa/enable`` (bearer) → 200 {two_factor: true}
- ``POST /me/2fa/disable`` (bearer) {password} → 200 {two_factor: false}; 403 wrong password
- ``POST /orgs`` (bearer) {name} → 201 {id, name}; the caller becomes its owner
- ``PATCH /orgs/{org_id}/settings`` (admin) {...any settings} → 200 all settings
- ``POST /orgs/{org_id}/api-keys`` (admin) {name} → 201 {id, name, secret}; shown once
- ``DELETE /orgs/{org_id}/api-keys/{key_id}`` (admin) → 204
- ``PUT /orgs/{org_id}/feature-flags/{flag}`` (admin) {enabled} → 200 {flag, enabled}
- ``POST /orgs/{org_id}/invitations`` (admin) {email, role} → 201 {id, email, role, status}
- ``POST /invitations/{invitation_id}/accept`` (the invitee) → 200 {org_id, role}
- ``PATCH /orgs/{org_id}/members/{user_id}`` (admin) {role} → 200 {user_id, role}
- ``DELETE /orgs/{org_id}/members/{user_id}`` (admin) → 204
- ``GET /orgs/{org_id}/members`` (member) → 200 [{user_id, email, name, role}]
- ``GET /health`` → 200 {status: "ok"}

"admin" means an owner or admin of that organization (403 otherwise, 404 for an unknown org).
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at runtime,
# and the dependency aliases below are local to create_app().
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, StrictBool

# Used only by the deployment line at the bottom, never by the application itself.
from audit_middleware import AuditMiddleware
from examples.saas_domain import DomainError, Store, TokenService, Unauthorized, User
from examples.saas_domain import jwt_secret as jwt_secret_from

__all__ = ["RULES_FILE", "create_app"]

#: The audit rules of this API, next to this module.
RULES_FILE = Path(__file__).with_name("audit-rules.toml")


# -- request bodies ---------------------------------------------------------------------------


class RegisterBody(BaseModel):
    email: str
    password: str
    name: str


class LoginBody(BaseModel):
    email: str
    password: str


class PasswordResetBody(BaseModel):
    email: str


class PasswordChangeBody(BaseModel):
    current_password: str
    new_password: str


class PasswordBody(BaseModel):
    password: str


class NameBody(BaseModel):
    name: str


class FeatureFlagBody(BaseModel):
    enabled: StrictBool


class InvitationBody(BaseModel):
    email: str
    role: str


class RoleBody(BaseModel):
    role: str


# -- the application --------------------------------------------------------------------------


def create_app(
    store: Store | None = None,
    *,
    jwt_secret: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The SaaS API over ``store`` (default: :meth:`Store.seeded`).

    Access tokens are signed with ``jwt_secret``, else ``SAAS_JWT_SECRET`` from
    ``environ`` (default: the process environment), else the development default.
    """
    store = store if store is not None else Store.seeded()
    tokens = TokenService(jwt_secret or jwt_secret_from(environ))
    app = FastAPI(title="Example SaaS API")
    bearer_scheme = HTTPBearer(auto_error=False)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    def bearer_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> str:
        if credentials is None:
            raise Unauthorized("authentication required")
        return credentials.credentials

    def current_user(token: Annotated[str, Depends(bearer_token)]) -> User:
        return store.authenticate(tokens, token)

    Token = Annotated[str, Depends(bearer_token)]
    CurrentUser = Annotated[User, Depends(current_user)]

    # Handlers are sync: password hashing is CPU-bound, so they run in the thread pool.

    @app.post("/auth/register", status_code=201)
    def register(body: RegisterBody) -> dict[str, Any]:
        return store.register(body.email, body.password, body.name)

    @app.post("/auth/login")
    def login(body: LoginBody) -> dict[str, Any]:
        return store.login(tokens, body.email, body.password)

    @app.post("/auth/logout", status_code=204)
    def logout(user: CurrentUser, token: Token) -> None:
        store.logout(tokens, token)

    @app.post("/auth/password-reset", status_code=202)
    def password_reset(body: PasswordResetBody) -> dict[str, str]:
        store.request_password_reset(body.email)
        return {"status": "sent"}

    @app.post("/me/password", status_code=204)
    def change_password(user: CurrentUser, body: PasswordChangeBody) -> None:
        store.change_password(user, body.current_password, body.new_password)

    @app.post("/me/2fa/enable")
    def enable_two_factor(user: CurrentUser) -> dict[str, Any]:
        return store.enable_two_factor(user)

    @app.post("/me/2fa/disable")
    def disable_two_factor(user: CurrentUser, body: PasswordBody) -> dict[str, Any]:
        return store.disable_two_factor(user, body.password)

    @app.post("/orgs", status_code=201)
    def create_org(user: CurrentUser, body: NameBody) -> dict[str, Any]:
        return store.create_org(user, body.name)

    @app.patch("/orgs/{org_id}/settings")
    def update_settings(
        org_id: str, user: CurrentUser, changes: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        return store.update_settings(user, org_id, changes)

    @app.post("/orgs/{org_id}/api-keys", status_code=201)
    def create_api_key(org_id: str, user: CurrentUser, body: NameBody) -> dict[str, Any]:
        return store.create_api_key(user, org_id, body.name)

    @app.delete("/orgs/{org_id}/api-keys/{key_id}", status_code=204)
    def delete_api_key(org_id: str, key_id: str, user: CurrentUser) -> None:
        store.delete_api_key(user, org_id, key_id)

    @app.put("/orgs/{org_id}/feature-flags/{flag}")
    def set_feature_flag(
        org_id: str, flag: str, user: CurrentUser, body: FeatureFlagBody
    ) -> dict[str, Any]:
        return store.set_feature_flag(user, org_id, flag, body.enabled)

    @app.post("/orgs/{org_id}/invitations", status_code=201)
    def invite(org_id: str, user: CurrentUser, body: InvitationBody) -> dict[str, Any]:
        return store.invite(user, org_id, body.email, body.role)

    @app.post("/invitations/{invitation_id}/accept")
    def accept_invitation(invitation_id: str, user: CurrentUser) -> dict[str, Any]:
        return store.accept_invitation(user, invitation_id)

    @app.patch("/orgs/{org_id}/members/{user_id}")
    def change_role(org_id: str, user_id: str, user: CurrentUser, body: RoleBody) -> dict[str, Any]:
        return store.change_role(user, org_id, user_id, body.role)

    @app.delete("/orgs/{org_id}/members/{user_id}", status_code=204)
    def remove_member(org_id: str, user_id: str, user: CurrentUser) -> None:
        store.remove_member(user, org_id, user_id)

    @app.get("/orgs/{org_id}/members")
    def list_members(org_id: str, user: CurrentUser) -> list[dict[str, Any]]:
        return store.list_members(user, org_id)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


# -- deployment -------------------------------------------------------------------------------
#
# The one line that adds audit logging. It is built on first access of ``app`` (which is what
# ``uvicorn examples.saas_fastapi:app`` does) rather than at import time: the middleware
# refuses to start without the ``SAAS_JWT_SECRET`` its rules file names, and importing
# ``create_app`` (for tests or other servers) must not need it.


def __getattr__(name: str) -> AuditMiddleware:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = AuditMiddleware(create_app(), rules_file=RULES_FILE)
    globals()["app"] = app  # build it once
    return app
