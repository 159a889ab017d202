"""Pure ASGI middleware: protocol glue only; capture logic lives in the Auditor.

Non-HTTP scopes pass through untouched (lifespan messages are only observed, to flush on
shutdown). Responses stream through unbuffered. Per-request state stays in locals and one
:class:`RequestContext`, never on ``self``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import Token
from time import perf_counter_ns, time_ns
from typing import Any, Final

from mypy_extensions import mypyc_attr

from audit_middleware._auditor import Auditor
from audit_middleware._builder import MAX_REQUEST_BODY, MAX_RESPONSE_BODY
from audit_middleware._context import RequestContext, _current
from audit_middleware._views import method_text, status_number
from audit_middleware._warn import logger, warn_limited

__all__ = ["AuditMiddleware"]

# Final aliases: compiled code reads these directly, not from the module's dict (see
# scripts/compile.py).
_time_ns: Final = time_ns
_perf_counter_ns: Final = perf_counter_ns

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (scripts/compile.py), subclassable
class AuditMiddleware:
    """Wrap any ASGI app: ``app = AuditMiddleware(app)``.

    Pass an ``auditor`` to share one between apps, or keyword arguments of :class:`Auditor`
    (``rules=...``, ``exporters=...``, ...); anything not given comes from ``AUDIT_LOG_*``.
    """

    def __init__(self, app: ASGIApp, *, auditor: Auditor | None = None, **options: Any) -> None:
        if auditor is not None and options:
            raise TypeError("pass either an auditor or Auditor keyword arguments, not both")
        self.app = app
        self.auditor = auditor if auditor is not None else Auditor(**options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        auditor = self.auditor
        if scope_type != "http" or not auditor.enabled:
            if scope_type == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return

        method = scope.get("method")
        if type(method) is not str:
            method = method_text(method)
        ctx = RequestContext(auditor, scope, method, _time_ns())
        start = _perf_counter_ns()
        rules = auditor.rules
        keep_body = method in rules.body_methods
        keep_headers = keep_body or method in rules.response_header_methods
        keep_request = method in rules.request_body_methods
        capture_trace = auditor.capture_trace
        strict = auditor.strict
        if keep_request:
            ctx.request_body = []
        slot: list[RequestContext | None] = [ctx]
        token: Token[list[RequestContext | None] | None] | None = None  # set before the app runs

        async def audit_send(message: Message) -> None:
            nonlocal token
            if message["type"] == "http.response.start":
                status = message["status"]
                ctx.status = status if type(status) is int else status_number(status)
                if capture_trace is not None:  # inside any tracing middleware's span
                    ctx.trace = capture_trace()
                if keep_headers:
                    ctx.response_headers = message.get("headers")
                await send(message)
            elif message["type"] == "http.response.body":
                if keep_body:
                    keep_chunk(ctx, message.get("body", b""))
                final = not message.get("more_body", False)
                if final and strict and auditor.may_audit(ctx):
                    ctx.duration_ns = _perf_counter_ns() - start
                    ctx.completed = not ctx.disconnected
                    # The client gets its last byte only once the event is on disk.
                    await _in_thread(auditor.make_durable, ctx)
                if final and token is not None:
                    # The server's send of the last body starts its keep-alive timer, which
                    # copies the context and holds the copy for seconds: sent outside this
                    # request's context variable, the copy holds nothing of the request.
                    try:
                        _current.reset(token)
                    except ValueError:  # sent from another task, not in the variable's context
                        await send(message)
                    else:
                        token = None
                        try:
                            await send(message)
                        finally:
                            token = _current.set(slot)
                else:
                    await send(message)
                if final and ctx.strict_events is None:
                    ctx.duration_ns = _perf_counter_ns() - start
                    ctx.completed = not ctx.disconnected
            else:
                await send(message)

        async def audit_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not ctx.duration_ns:
                ctx.disconnected = True
            elif keep_request and message["type"] == "http.request":
                keep_request_chunk(ctx, message.get("body", b""))
            return message

        token = _current.set(slot)
        try:
            await self.app(scope, audit_receive, audit_send)
        except BaseException as exc:
            ctx.error_type = type(exc).__qualname__
            raise
        finally:
            if token is not None:
                _current.reset(token)
            slot[0] = None  # contexts copied during the request no longer lead to it
            if not ctx.duration_ns:
                ctx.duration_ns = _perf_counter_ns() - start
            try:
                auditor.submit_request(ctx)
            except Exception:
                warn_limited("capture", "could not capture an audit event; request unaffected")
                logger.debug("capture error", exc_info=True)

    def _lifespan_send(self, send: Send) -> Send:
        auditor = self.auditor

        async def lifespan_send(message: Message) -> None:
            # Server shutdown, not a request: a bounded wait for delivery is acceptable.
            shutting_down = message["type"] in (
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            )
            if shutting_down and not auditor.force_flush():
                logger.warning("audit events not confirmed delivered at lifespan shutdown")
            await send(message)

        return lifespan_send


async def _in_thread(function: Callable[[RequestContext], None], ctx: RequestContext) -> None:
    """Run blocking disk I/O off the event loop (anyio when available, else asyncio)."""
    try:
        import anyio.to_thread
    except ImportError:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, function, ctx)
        return
    await anyio.to_thread.run_sync(function, ctx)


def keep_chunk(ctx: RequestContext, chunk: object) -> None:
    """Keep a bounded copy (by reference) of the response body for ``response.*`` sources."""
    if type(chunk) is not bytes:
        chunk = _as_bytes(chunk)
    if not chunk:
        return
    kept = ctx.response_body
    if kept is None:
        ctx.response_body = [chunk]  # the common case: one chunk
    elif sum(map(len, kept)) <= MAX_RESPONSE_BODY:
        kept.append(chunk)  # stops once over the cap; the builder then ignores the body


def keep_request_chunk(ctx: RequestContext, chunk: object) -> None:
    """Keep a bounded copy of the request body the app reads, for ``body.*`` sources."""
    kept = ctx.request_body
    if type(chunk) is not bytes:
        chunk = _as_bytes(chunk)
    if kept is not None and chunk and sum(map(len, kept)) <= MAX_REQUEST_BODY:
        kept.append(chunk)


def _as_bytes(chunk: object) -> bytes:
    """A body chunk that is not ``bytes``: a copy of a bytes-like one, else nothing (a buggy
    app's ``str`` is the server's to refuse, not a source of values)."""
    return bytes(chunk) if isinstance(chunk, (bytearray, memoryview)) else b""
