"""A Starlette app wrapped in one line, configured entirely by ``AUDIT_LOG_*`` variables."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from audit_middleware import AuditMiddleware


async def write(request: Request) -> PlainTextResponse:
    return PlainTextResponse("stored")


app = AuditMiddleware(Starlette(routes=[Route("/docs", write, methods=["POST"])]))
