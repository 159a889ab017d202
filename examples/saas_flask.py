"""The example SaaS HTTP API on Flask: an existing app, written without audit logging in mind.

Everything in :func:`create_app` is plain Flask over :mod:`examples.saas_domain`; it never
imports the audit library. It serves the same HTTP API as ``examples/saas_fastapi.py`` (same
paths, methods, JSON bodies, statuses and response bodies; see that module for the list), so
the same rules file (``examples/audit-rules.toml``) describes its audit events. Audit logging
is ONE line in :func:`wrapped_app` at the bottom of this module::

    app.wsgi_app = AuditWSGIMiddleware(app.wsgi_app, rules_file=RULES_FILE)

Run it with ``SAAS_JWT_SECRET`` set to a secret of at least 32 bytes (the app signs access
tokens with it, and the middleware verifies bearer tokens with the same secret)::

    SAAS_JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \\
        waitress-serve --call examples.saas_flask:wrapped_app

(``waitress-serve examples.saas_flask:app`` and ``flask --app examples.saas_flask run`` serve
the same audited app.)

Errors are answered as the FastAPI version answers them: ``{"detail": ...}`` with the status
of the :class:`~examples.saas_domain.DomainError` (401 adds ``WWW-Authenticate: Bearer``),
``{"detail": "Not Found"}`` (404) and ``{"detail": "Method Not Allowed"}`` (405, with
``Allow``), and a plain-text ``Internal Server Error`` for a 500. Request bodies are checked in
FastAPI's order: a body that is not valid JSON is refused first (422, or 400 when it is not
even text), then the bearer token (401), then the shape of the body (422), then the use case.
The one deliberate difference: FastAPI describes a malformed body with pydantic's list of
errors (which echoes the offending input, passwords included), this app with one message,
e.g. ``{"detail": "body.email: Field required"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

# Used only by the deployment lines at the bottom, never by the application itself.
from audit_middleware import AuditWSGIMiddleware
from examples.saas_domain import DomainError, InvalidInput, Store, TokenService, Unauthorized, User
from examples.saas_domain import jwt_secret as jwt_secret_from

__all__ = ["RULES_FILE", "create_app", "wrapped_app"]

#: The audit rules of this API, next to this module.
RULES_FILE = Path(__file__).with_name("audit-rules.toml")


# -- request bodies ---------------------------------------------------------------------------


class UnreadableBody(DomainError):
    """A JSON body that is not even UTF-8/16/32 text (400, as FastAPI answers it)."""

    status = 400


_MISSING: Final = object()


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters ignored."""
    mimetype = (content_type or "").partition(";")[0].strip().lower()
    maintype, _, subtype = mimetype.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


def _read_body() -> Any:
    """The request body: parsed when it is declared JSON, else the raw bytes (never valid).

    Called before authentication, as FastAPI does: a body that does not parse is refused
    before anything else.
    """
    raw = request.get_data()
    if not raw:
        return _MISSING
    if not _is_json(request.headers.get("Content-Type")):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidInput("body: JSON decode error") from None
    except (ValueError, RecursionError):  # not UTF-8/16/32, or absurdly nested
        raise UnreadableBody("There was an error parsing the body") from None


def _object(body: Any) -> dict[str, Any]:
    """The body as a JSON object (422 otherwise)."""
    if body is _MISSING:
        raise InvalidInput("body: Field required")
    if not isinstance(body, dict):
        raise InvalidInput("body: Input should be a valid dictionary")
    return body


def _strings(body: Any, *names: str) -> list[str]:
    """The named string fields of a JSON object body, in order (422 for the first bad one)."""
    fields = _object(body)
    values: list[str] = []
    for name in names:
        value = fields.get(name, _MISSING)
        if value is _MISSING:
            raise InvalidInput(f"body.{name}: Field required")
        if not isinstance(value, str):
            raise InvalidInput(f"body.{name}: Input should be a valid string")
        values.append(value)
    return values


def _boolean(body: Any, name: str) -> bool:
    """A strictly boolean field of a JSON object body (422 for anything else)."""
    value = _object(body).get(name, _MISSING)
    if value is _MISSING:
        raise InvalidInput(f"body.{name}: Field required")
    if not isinstance(value, bool):
        raise InvalidInput(f"body.{name}: Input should be a valid boolean")
    return value


# -- responses --------------------------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Compact UTF-8 JSON, in the order the domain built it (as FastAPI renders it)."""
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(text, status, headers, mimetype="application/json")


def _no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def _bearer_token() -> str:
    """The credentials of an ``Authorization: Bearer`` header (401 if there is none)."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if not credentials or scheme.lower() != "bearer":
        raise Unauthorized("authentication required")
    return credentials


# -- the application --------------------------------------------------------------------------


def create_app(
    store: Store | None = None,
    *,
    jwt_secret: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Flask:
    """The SaaS API over ``store`` (default: :meth:`Store.seeded`).

    Access tokens are signed with ``jwt_secret``, else ``SAAS_JWT_SECRET`` from
    ``environ`` (default: the process environment), else the development default.
    """
    store = store if store is not None else Store.seeded()
    tokens = TokenService(jwt_secret or jwt_secret_from(environ))
    app = Flask(__name__)
    # Like FastAPI, answer OPTIONS with 405 rather than an automatic 200 (set before routes).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _json({"detail": exc.detail}, exc.status, headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        """Flask's own errors: unknown path, wrong method, an exception no handler took."""
        if isinstance(exc, InternalServerError) and exc.original_exception is not None:
            # Flask logs the exception; the client learns nothing (FastAPI's plain 500).
            return Response("Internal Server Error", 500, mimetype="text/plain")
        headers: dict[str, str] = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return _json({"detail": exc.name}, exc.code or 500, headers)

    def current_user() -> User:
        return store.authenticate(tokens, _bearer_token())

    @app.post("/auth/register")
    def register() -> Response:
        email, password, name = _strings(_read_body(), "email", "password", "name")
        return _json(store.register(email, password, name), 201)

    @app.post("/auth/login")
    def login() -> Response:
        email, password = _strings(_read_body(), "email", "password")
        return _json(store.login(tokens, email, password))

    @app.post("/auth/logout")
    def logout() -> Response:
        token = _bearer_token()
        store.authenticate(tokens, token)
        store.logout(tokens, token)
        return _no_content()

    @app.post("/auth/password-reset")
    def password_reset() -> Response:
        (email,) = _strings(_read_body(), "email")
        store.request_password_reset(email)
        return _json({"status": "sent"}, 202)

    @app.post("/me/password")
    def change_password() -> Response:
        body = _read_body()
        user = current_user()
        current_password, new_password = _strings(body, "current_password", "new_password")
        store.change_password(user, current_password, new_password)
        return _no_content()

    @app.post("/me/2fa/enable")
    def enable_two_factor() -> Response:
        return _json(store.enable_two_factor(current_user()))

    @app.post("/me/2fa/disable")
    def disable_two_factor() -> Response:
        body = _read_body()
        user = current_user()
        (password,) = _strings(body, "password")
        return _json(store.disable_two_factor(user, password))

    @app.post("/orgs")
    def create_org() -> Response:
        body = _read_body()
        user = current_user()
        (name,) = _strings(body, "name")
        return _json(store.create_org(user, name), 201)

    @app.patch("/orgs/<org_id>/settings")
    def update_settings(org_id: str) -> Response:
        body = _read_body()
        user = current_user()
        return _json(store.update_settings(user, org_id, _object(body)))

    @app.post("/orgs/<org_id>/api-keys")
    def create_api_key(org_id: str) -> Response:
        body = _read_body()
        user = current_user()
        (name,) = _strings(body, "name")
        return _json(store.create_api_key(user, org_id, name), 201)

    @app.delete("/orgs/<org_id>/api-keys/<key_id>")
    def delete_api_key(org_id: str, key_id: str) -> Response:
        store.delete_api_key(current_user(), org_id, key_id)
        return _no_content()

    @app.put("/orgs/<org_id>/feature-flags/<flag>")
    def set_feature_flag(org_id: str, flag: str) -> Response:
        body = _read_body()
        user = current_user()
        enabled = _boolean(body, "enabled")
        return _json(store.set_feature_flag(user, org_id, flag, enabled))

    @app.post("/orgs/<org_id>/invitations")
    def invite(org_id: str) -> Response:
        body = _read_body()
        user = current_user()
        email, role = _strings(body, "email", "role")
        return _json(store.invite(user, org_id, email, role), 201)

    @app.post("/invitations/<invitation_id>/accept")
    def accept_invitation(invitation_id: str) -> Response:
        return _json(store.accept_invitation(current_user(), invitation_id))

    @app.patch("/orgs/<org_id>/members/<user_id>")
    def change_role(org_id: str, user_id: str) -> Response:
        body = _read_body()
        user = current_user()
        (role,) = _strings(body, "role")
        return _json(store.change_role(user, org_id, user_id, role))

    @app.delete("/orgs/<org_id>/members/<user_id>")
    def remove_member(org_id: str, user_id: str) -> Response:
        store.remove_member(current_user(), org_id, user_id)
        return _no_content()

    @app.get("/orgs/<org_id>/members")
    def list_members(org_id: str) -> Response:
        return _json(store.list_members(current_user(), org_id))

    @app.get("/health")
    def health() -> Response:
        return _json({"status": "ok"})

    return app


# -- deployment -------------------------------------------------------------------------------
#
# The one line that adds audit logging is in wrapped_app(). It runs when a server asks for the
# app (``waitress-serve --call examples.saas_flask:wrapped_app``, or ``app`` below), never at
# import time: the middleware refuses to start without the ``SAAS_JWT_SECRET`` its rules file
# names, and importing ``create_app`` (for tests or other servers) must not need it.


def wrapped_app() -> Flask:
    """The app with audit logging: what a production server should serve."""
    app = create_app()
    app.wsgi_app = AuditWSGIMiddleware(app.wsgi_app, rules_file=RULES_FILE)  # type: ignore[method-assign]
    return app


def __getattr__(name: str) -> Flask:
    # ``app`` is built on first access (``waitress-serve examples.saas_flask:app``, ``flask run``),
    # so that Flask's CLI never falls back to calling create_app() and serving it unaudited.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = wrapped_app()
    globals()["app"] = app  # build it once
    return app
