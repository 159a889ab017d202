"""Function views of the example SaaS API, over one replaceable store per process.

The views answer exactly as ``examples/saas_fastapi.py`` does: JSON bodies in the domain's
field order, ``{"detail": ...}`` with the status of the
:class:`~examples.saas_domain.DomainError` (401 adds ``WWW-Authenticate: Bearer``),
``{"detail": "Not Found"}`` (404), ``{"detail": "Method Not Allowed"}`` (405, with ``Allow``)
and a plain-text ``Internal Server Error`` for a 500. Request bodies are checked in FastAPI's
order: a body that is not valid JSON is refused first (422, or 400 when it is not even text),
then the bearer token (401), then the shape of the body (422), then the use case. The one
deliberate difference: FastAPI describes a malformed body with pydantic's list of errors (which
echoes the offending input, passwords included), these views with one message, e.g.
``{"detail": "body.email: Field required"}``.

The store and the token service live in a module-level :class:`Backend`. Django settings are
per process, and so is the backend: :func:`configure` (called by
:func:`examples.saas_django.wsgi.create_application`) replaces it, and the first request of a
process that never configured one gets :meth:`Store.seeded`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from examples.saas_domain import DomainError, InvalidInput, Store, TokenService, Unauthorized, User
from examples.saas_domain import jwt_secret as jwt_secret_from

__all__ = [
    "Backend",
    "backend",
    "bad_request",
    "configure",
    "head_without_body",
    "not_found",
    "route",
    "server_error",
]

View = Callable[..., HttpResponse]


# -- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """What the views work with: the store and the service that signs access tokens."""

    store: Store
    tokens: TokenService


_backend: Backend | None = None
_backend_lock = threading.Lock()


def configure(store: Store | None = None, *, jwt_secret: str | None = None) -> Backend:
    """Make every view of this process use ``store`` (default: :meth:`Store.seeded`).

    Access tokens are signed with ``jwt_secret``, else ``SAAS_JWT_SECRET`` from the process
    environment, else the development default. Replaces the previous backend, if any.
    """
    global _backend
    configured = Backend(
        store if store is not None else Store.seeded(),
        TokenService(jwt_secret or jwt_secret_from()),
    )
    with _backend_lock:
        _backend = configured
    return configured


def backend() -> Backend:
    """The backend of this process (a seeded store on first use if none was configured)."""
    global _backend
    current = _backend
    if current is None:
        with _backend_lock:
            if _backend is None:
                _backend = Backend(Store.seeded(), TokenService(jwt_secret_from()))
            current = _backend
    return current


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


def _read_body(request: HttpRequest) -> Any:
    """The request body: parsed when it is declared JSON, else the raw bytes (never valid).

    Called before authentication, as FastAPI does: a body that does not parse is refused
    before anything else.
    """
    raw: bytes = request.body
    if not raw:
        return _MISSING
    if not _is_json(request.META.get("CONTENT_TYPE")):
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


# -- responses and routing --------------------------------------------------------------------

_JSON_FORMAT: Final = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> HttpResponse:
    """Compact UTF-8 JSON, in the order the domain built it (as FastAPI renders it)."""
    return JsonResponse(
        body, status=status, headers=headers, safe=False, json_dumps_params=_JSON_FORMAT
    )


def _no_content() -> HttpResponse:
    response = HttpResponse(status=204)
    del response.headers["Content-Type"]
    return response


def route(**handlers: View) -> View:
    """The view of one URL: ``route(PATCH=change_role, DELETE=remove_member)``.

    Each handler takes the request and the path parameters. Other methods answer 405 with
    ``Allow``; a :class:`DomainError` becomes its JSON error response.
    """
    allow = ", ".join(handlers)

    def view(request: HttpRequest, **params: str) -> HttpResponse:
        handler = handlers.get(request.method)
        if handler is None:
            return _json({"detail": "Method Not Allowed"}, 405, {"Allow": allow})
        try:
            return handler(request, **params)
        except DomainError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return _json({"detail": exc.detail}, exc.status, headers)

    # Bearer tokens, never cookies: no cross-site request can act as anyone.
    return cast(View, csrf_exempt(view))


def _bearer_token(request: HttpRequest) -> str:
    """The credentials of an ``Authorization: Bearer`` header (401 if there is none)."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if not credentials or scheme.lower() != "bearer":
        raise Unauthorized("authentication required")
    return str(credentials)


def _current_user(request: HttpRequest) -> User:
    app = backend()
    return app.store.authenticate(app.tokens, _bearer_token(request))


def head_without_body(get_response: View) -> View:
    """Middleware: answer HEAD without a body (Django leaves that to the server, and waitress
    sends whatever body it is given, which the client then reads as the next response)."""

    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if request.method == "HEAD" and not response.streaming:
            if not response.has_header("Content-Length"):
                response.headers["Content-Length"] = str(len(response.content))
            response.content = b""
        return response

    return middleware


# -- Django's own errors (see urls.py) --------------------------------------------------------


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400: e.g. a ``Host`` outside ``ALLOWED_HOSTS``."""
    return _json({"detail": "Bad Request"}, 400)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404: no URL pattern matches."""
    return _json({"detail": "Not Found"}, 404)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: a view raised (Django logs the exception; it is never shown)."""
    return HttpResponse(
        "Internal Server Error", status=500, content_type="text/plain; charset=utf-8"
    )


# -- accounts and sessions --------------------------------------------------------------------


def register(request: HttpRequest) -> HttpResponse:
    email, password, name = _strings(_read_body(request), "email", "password", "name")
    return _json(backend().store.register(email, password, name), 201)


def login(request: HttpRequest) -> HttpResponse:
    email, password = _strings(_read_body(request), "email", "password")
    app = backend()
    return _json(app.store.login(app.tokens, email, password))


def logout(request: HttpRequest) -> HttpResponse:
    app, token = backend(), _bearer_token(request)
    app.store.authenticate(app.tokens, token)
    app.store.logout(app.tokens, token)
    return _no_content()


def password_reset(request: HttpRequest) -> HttpResponse:
    (email,) = _strings(_read_body(request), "email")
    backend().store.request_password_reset(email)
    return _json({"status": "sent"}, 202)


def change_password(request: HttpRequest) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    current_password, new_password = _strings(body, "current_password", "new_password")
    backend().store.change_password(user, current_password, new_password)
    return _no_content()


def enable_two_factor(request: HttpRequest) -> HttpResponse:
    return _json(backend().store.enable_two_factor(_current_user(request)))


def disable_two_factor(request: HttpRequest) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    (password,) = _strings(body, "password")
    return _json(backend().store.disable_two_factor(user, password))


# -- organizations ----------------------------------------------------------------------------


def create_org(request: HttpRequest) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    (name,) = _strings(body, "name")
    return _json(backend().store.create_org(user, name), 201)


def update_settings(request: HttpRequest, org_id: str) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    return _json(backend().store.update_settings(user, org_id, _object(body)))


def set_feature_flag(request: HttpRequest, org_id: str, flag: str) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    enabled = _boolean(body, "enabled")
    return _json(backend().store.set_feature_flag(user, org_id, flag, enabled))


def create_api_key(request: HttpRequest, org_id: str) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    (name,) = _strings(body, "name")
    return _json(backend().store.create_api_key(user, org_id, name), 201)


def delete_api_key(request: HttpRequest, org_id: str, key_id: str) -> HttpResponse:
    backend().store.delete_api_key(_current_user(request), org_id, key_id)
    return _no_content()


# -- invitations and members ------------------------------------------------------------------


def invite(request: HttpRequest, org_id: str) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    email, role = _strings(body, "email", "role")
    return _json(backend().store.invite(user, org_id, email, role), 201)


def accept_invitation(request: HttpRequest, invitation_id: str) -> HttpResponse:
    return _json(backend().store.accept_invitation(_current_user(request), invitation_id))


def change_role(request: HttpRequest, org_id: str, user_id: str) -> HttpResponse:
    body = _read_body(request)
    user = _current_user(request)
    (role,) = _strings(body, "role")
    return _json(backend().store.change_role(user, org_id, user_id, role))


def remove_member(request: HttpRequest, org_id: str, user_id: str) -> HttpResponse:
    backend().store.remove_member(_current_user(request), org_id, user_id)
    return _no_content()


def list_members(request: HttpRequest, org_id: str) -> HttpResponse:
    return _json(backend().store.list_members(_current_user(request), org_id))


def health(request: HttpRequest) -> HttpResponse:
    return _json({"status": "ok"})
