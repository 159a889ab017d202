"""The demo's Security Activity dashboard: the retrieval router mounted into the example app,
authorized by the app's own sessions (an owner or admin of the org, from a ``session`` cookie).
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from audit_middleware.query import ArchiveReader
from audit_middleware.retrieval import Unauthenticated, audit_log_router
from examples.saas_domain import DomainError, Store, TokenService

__all__ = ["mount_dashboard"]


def mount_dashboard(app: Any, reader: ArchiveReader, store: Store, tokens: TokenService) -> Any:
    """Mount the audit routes at ``/audit``; return a function making one-time sign-in links."""

    def authorize(request: Request, org_id: str) -> bool:
        try:
            user = store.authenticate(tokens, request.cookies.get("session"))
        except DomainError:
            raise Unauthenticated("sign in first") from None
        return store.is_admin(user, org_id)

    links: dict[str, tuple[str, str]] = {}  # one-time nonce -> (session token, org)

    async def sign_in(request: Request) -> Response:
        found = links.pop(request.path_params["nonce"], None)
        if found is None:
            return Response("this sign-in link was used already", status_code=404)
        token, org_id = found
        response = RedirectResponse(f"/audit/orgs/{org_id}/dashboard", status_code=303)
        response.set_cookie("session", token, httponly=True, samesite="strict")
        return response

    app.router.routes.append(Route("/demo/sign-in/{nonce}", sign_in))
    app.mount("/audit", audit_log_router(reader, authorize=authorize))

    def link_for(user_id: str, org_id: str) -> str:
        nonce = secrets.token_urlsafe(16)
        links[nonce] = (tokens.issue(store.users[user_id], org_id), org_id)
        return f"/demo/sign-in/{nonce}"

    return link_for
