"""Pure WSGI middleware: protocol glue only; capture logic is shared with the ASGI middleware.

Per-request state stays in one :class:`RequestContext` and locals, so the middleware is safe
under threaded servers. The response iterable is passed through chunk by chunk (never
buffered) and its ``close()`` is always honoured; the event is submitted once, when the server
closes the response (or when the app raises).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter_ns, time_ns
from types import TracebackType
from typing import Any

from audit_middleware._asgi import keep_chunk
from audit_middleware._auditor import Auditor
from audit_middleware._builder import MAX_REQUEST_BODY
from audit_middleware._context import RequestContext, _current, current_context
from audit_middleware._views import method_text
from audit_middleware._warn import logger, warn_limited

__all__ = ["AuditWSGIMiddleware"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class AuditWSGIMiddleware:
    """Wrap any WSGI app: ``app.wsgi_app = AuditWSGIMiddleware(app.wsgi_app)`` (Flask) or
    ``application = AuditWSGIMiddleware(get_wsgi_application())`` (Django).

    Takes the same ``auditor`` or :class:`Auditor` keyword arguments as ``AuditMiddleware``.
    """

    def __init__(self, app: WSGIApp, *, auditor: Auditor | None = None, **options: Any) -> None:
        if auditor is not None and options:
            raise TypeError("pass either an auditor or Auditor keyword arguments, not both")
        self.app = app
        self.auditor = auditor if auditor is not None else Auditor(**options)
        self._framework = _framework_of(app)
        _listen_for_framework_errors()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        auditor = self.auditor
        if not auditor.enabled:
            return self.app(environ, start_response)
        method = method_text(environ.get("REQUEST_METHOD"))
        ctx = RequestContext(auditor, environ, method, time_ns())
        ctx.protocol = self._framework
        start = perf_counter_ns()
        rules = auditor.rules
        keep_body = method in rules.body_methods
        keep_headers = keep_body or method in rules.response_header_methods
        if method in rules.request_body_methods and "wsgi.input" in environ:
            environ["wsgi.input"] = _TeeInput(environ["wsgi.input"], ctx)

        capture_trace = auditor.capture_trace

        def audit_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Any:
            ctx.status = _status_code(status)
            if capture_trace is not None:
                ctx.trace = capture_trace()
            if keep_headers:
                ctx.response_headers = headers
            return start_response(status, headers, exc_info)

        slot: list[RequestContext | None] = [ctx]
        token = _current.set(slot)
        try:
            result = self.app(environ, audit_start_response)
        except BaseException as exc:
            ctx.error_type = type(exc).__qualname__
            _finish(ctx, start, token, slot)
            raise
        return _AuditedResponse(result, ctx, start, (token, slot), keep_body, auditor.strict)


class _AuditedResponse:
    """Passes the app's iterable through; records completion and submits the event on close."""

    def __init__(
        self,
        result: Iterable[bytes],
        ctx: RequestContext,
        start: int,
        entered: tuple[Any, list[RequestContext | None]],  # the context var's token, and slot
        keep_body: bool,
        strict: bool = False,
    ) -> None:
        self._strict = strict
        self._result = result
        self._ctx = ctx
        self._start = start
        self._entered = entered
        self._keep_body = keep_body
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        ctx = self._ctx
        held: bytes | None = None  # strict mode holds one chunk back: the last one waits
        try:
            for chunk in self._result:
                if self._keep_body:
                    keep_chunk(ctx, chunk)
                if self._strict:
                    if held is not None:
                        yield held
                    held = chunk
                else:
                    yield chunk
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                ctx.error_type = type(exc).__qualname__
            raise
        ctx.duration_ns = perf_counter_ns() - self._start
        ctx.completed = True
        if self._strict:
            ctx.auditor.make_durable(ctx)  # on disk before the client gets the last byte
            if held is not None:
                yield held

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            self._ctx.error_type = self._ctx.error_type or type(exc).__qualname__
            raise
        finally:
            if not self._done:
                self._done = True
                _finish(self._ctx, self._start, *self._entered)


class _TeeInput:
    """``wsgi.input`` that keeps a bounded copy of what the app reads (never reads on its own)."""

    def __init__(self, stream: Any, ctx: RequestContext) -> None:
        self._stream = stream
        self._ctx = ctx
        ctx.request_body = []

    def _keep(self, data: bytes) -> bytes:
        kept = self._ctx.request_body
        if kept is not None and data and sum(map(len, kept)) <= MAX_REQUEST_BODY:
            kept.append(data)
        return data

    def read(self, *args: Any) -> bytes:
        return self._keep(self._stream.read(*args))

    def readline(self, *args: Any) -> bytes:
        return self._keep(self._stream.readline(*args))

    def readlines(self, *args: Any) -> list[bytes]:
        return [self._keep(line) for line in self._stream.readlines(*args)]

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield self._keep(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _framework_of(app: Any) -> str:
    """``wsgi-django`` for Django's handler (its routes are looked up), else ``wsgi``."""
    django_wsgi = sys.modules.get("django.core.handlers.wsgi")
    handler = getattr(django_wsgi, "WSGIHandler", None)
    if handler is not None and isinstance(app, handler):
        return "wsgi-django"
    return "wsgi"


_listening = False


def _listen_for_framework_errors() -> None:
    """Flask and Django turn a view's exception into a 500 before WSGI middleware sees it;
    their ``got_request_exception`` signals tell us its class (once per process)."""
    global _listening
    if _listening:
        return
    _listening = True
    if "flask" in sys.modules:
        from flask import got_request_exception as flask_signal

        flask_signal.connect(_on_flask_exception, weak=False)
    if "django" in sys.modules:
        from django.core.signals import (
            got_request_exception as django_signal,
        )

        django_signal.connect(_on_django_exception, weak=False)


def _on_flask_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    ctx = current_context()
    if ctx is not None:
        ctx.error_type = type(exception).__qualname__


def _on_django_exception(sender: Any, **_: Any) -> None:
    ctx = current_context()
    exc = sys.exc_info()[1]
    if ctx is not None and exc is not None:
        ctx.error_type = type(exc).__qualname__


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return 0


def _finish(ctx: RequestContext, start: int, token: Any, slot: list[RequestContext | None]) -> None:
    with contextlib.suppress(ValueError):  # closed from another context: the var dies with it
        _current.reset(token)
    slot[0] = None  # contexts copied during the request no longer lead to it
    if not ctx.duration_ns:
        ctx.duration_ns = perf_counter_ns() - start
    try:
        ctx.auditor.submit_request(ctx)
    except Exception:
        warn_limited("capture", "could not capture an audit event; request unaffected")
        logger.debug("capture error", exc_info=True)
