"""The handler-side API (set_actor & co.) in async and sync handlers, and record()."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import audit_middleware
from audit_middleware import Actor, AuditMiddleware, Auditor, AuditWSGIMiddleware, Target
from audit_middleware._context import RequestContext, _current, current_context
from tests.conftest import MemoryAuditor


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/async/{org_id}")
    async def async_handler(org_id: str) -> dict[str, bool]:
        audit_middleware.set_actor("u_1", type="user", email="a@example.test")
        audit_middleware.set_target("invoice", "inv_9")
        audit_middleware.set_action("billing.invoice.voided")
        audit_middleware.add_metadata(reason="duplicate", password="hunter2")
        return {"ok": True}

    @app.post("/sync/{org_id}")
    def sync_handler(org_id: str) -> dict[str, bool]:  # runs in a worker thread
        audit_middleware.set_actor("svc_billing", type="service")
        audit_middleware.set_org("org_override")
        return {"ok": True}

    @app.get("/read")
    def read_handler() -> dict[str, bool]:
        audit_middleware.set_action("report.downloaded")  # audits a read no rule names
        return {"ok": True}

    @app.post("/quiet")
    async def quiet() -> dict[str, bool]:
        audit_middleware.skip_audit()
        return {"ok": True}

    @app.post("/explicit/{org_id}")
    async def explicit(org_id: str) -> dict[str, bool]:
        audit_middleware.set_actor("u_2")
        audit_middleware.record(
            "org.member.role_updated", target=Target("user", "u_3"), metadata={"role": "admin"}
        )
        return {"ok": True}

    return app


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _ignore(message: Message) -> None:
    return None


def _serve(
    auditor: Auditor, app: ASGIApp, send: Send = _ignore, scope: Scope | None = None
) -> None:
    """One POST through ``AuditMiddleware(app)``, driven directly (no server)."""
    if scope is None:
        scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b""}
    asyncio.run(AuditMiddleware(app, auditor=auditor)(scope, _no_body, send))


def test_async_handler_hints(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor()
    TestClient(AuditMiddleware(_app(), auditor=auditor)).post("/async/org_a")
    (event,) = auditor.wait_for(1)
    assert event.action == "billing.invoice.voided"
    assert event.actor == Actor("u_1", "user", email="a@example.test")
    assert event.target == Target("invoice", "inv_9")
    assert event.org_id == "org_a"  # from the {org_id} path parameter
    assert event.metadata == {"reason": "duplicate", "password": "[REDACTED]"}


def test_sync_handler_hints_cross_the_thread_pool(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    TestClient(AuditMiddleware(_app(), auditor=auditor)).post("/sync/org_a")
    (event,) = auditor.wait_for(1)
    assert event.actor == Actor("svc_billing", "service")
    assert event.org_id == "org_override"


def test_set_action_audits_a_read_and_skip_audit_silences(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    client = TestClient(AuditMiddleware(_app(), auditor=auditor))
    client.post("/quiet")
    client.get("/read")
    (event,) = auditor.wait_for(1)
    assert event.action == "report.downloaded"


def test_record_inside_a_request_inherits_its_context(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    TestClient(AuditMiddleware(_app(), auditor=auditor)).post(
        "/explicit/org_b", headers={"user-agent": "ua", "x-request-id": "req-123"}
    )
    explicit, request_event = auditor.wait_for(2)
    assert explicit.action == "org.member.role_updated"
    assert explicit.actor.id == "u_2"
    assert explicit.org_id == "org_b"
    assert explicit.target == Target("user", "u_3")
    assert explicit.client is not None
    assert explicit.client.user_agent == "ua"
    assert explicit.request is not None
    assert explicit.request.id == request_event.request.id == "req-123"  # type: ignore[union-attr]
    assert explicit.request.status is None
    assert request_event.action == "http.post"


def test_a_context_copied_during_a_request_forgets_it_when_the_request_ends(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    """uvicorn's keep-alive timer copies the context as the response ends and holds the copy
    long after: the copy must not keep the request's state (scope, bodies) alive."""
    copies: list[contextvars.Context] = []
    during: list[object] = []

    def copy_context() -> None:
        copy = contextvars.copy_context()
        copies.append(copy)
        during.append(copy.run(current_context))

    async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        copy_context()  # as loop.call_later does

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        copy_context()
        return [b"ok"]

    auditor = make_auditor()

    _serve(auditor, asgi_app)
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["REQUEST_METHOD"] = "POST"
    response = AuditWSGIMiddleware(wsgi_app, auditor=auditor)(environ, lambda *a: None)
    list(response)
    response.close()  # type: ignore[attr-defined]
    assert auditor.wait_for(2)
    assert [type(ctx) for ctx in during] == [RequestContext, RequestContext]
    assert [copy.run(current_context) for copy in copies] == [None, None]


def test_the_server_sends_the_last_body_outside_the_request_context(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    """What the server's send copies for later (uvicorn: its keep-alive timer) holds nothing of
    the request; the app's code before and after that send still sees the request."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        seen["after"] = current_context()  # a background task, say
        audit_middleware.set_actor("u_after")

    async def server_send(message: Message) -> None:
        name = "last" if message.get("body") == b"b" else message["type"]
        seen[name] = contextvars.copy_context()

    auditor = make_auditor()
    _serve(auditor, app, server_send)
    (event,) = auditor.wait_for(1)
    assert _current not in seen["last"]
    assert _current in seen["http.response.start"]
    assert type(seen["after"]) is RequestContext
    assert event.actor.id == "u_after"
    assert event.request is not None
    assert event.request.completed is True


def test_a_last_body_sent_from_another_task_is_sent_as_it_is(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    """An app (or an inner middleware) that sends from a task of its own: the variable is not
    in that task's context to leave, and the response and the event are unaffected."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def respond() -> None:
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"made"})

        await asyncio.create_task(respond())
        audit_middleware.set_actor("u_task")

    async def server_send(message: Message) -> None:
        sent.append(message)

    auditor = make_auditor()
    _serve(auditor, app, server_send)
    (event,) = auditor.wait_for(1)
    assert [m.get("body") for m in sent] == [None, b"made"]
    assert (event.actor.id, event.outcome) == ("u_task", "success")
    assert event.request is not None
    assert event.request.status == 201


class _Scope(dict[str, Any]):
    """A scope that can be watched with a weak reference."""


def test_a_queued_request_lets_its_scope_go(make_auditor: Callable[..., MemoryAuditor]) -> None:
    """While a request waits to be built, the queue holds what the builder reads, not the scope
    (nor what the server and the app hung on it)."""
    auditor = make_auditor(batch_interval=60.0, loop_build=0)  # nothing is built until flushed

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"app": "objects"}
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    headers = [(b"user-agent", b"agent/1"), (b"x-request-id", b"req-7")]
    scope = _Scope(type="http", method="POST", path="/things", headers=headers, query_string=b"")
    scope["client"] = ("192.0.2.9", 4000)
    watched = weakref.ref(scope)
    _serve(auditor, app, scope=scope)
    del scope
    assert watched() is None
    (event,) = auditor.wait_for(1)
    assert event.request is not None
    assert event.client is not None
    assert (event.request.method, event.request.path, event.request.id) == (
        "POST",
        "/things",
        "req-7",
    )
    assert (event.client.ip, event.client.user_agent, event.outcome) == (
        "192.0.2.9",
        "agent/1",
        "success",
    )


def test_outside_a_request_the_hints_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    assert audit_middleware.set_actor("u_1") is False
    assert audit_middleware.set_target("x", "1") is False
    assert audit_middleware.set_org("o") is False
    assert audit_middleware.add_metadata(a=1) is False
    assert audit_middleware.skip_audit() is False
    assert "outside an audited request" in caplog.text


def test_invalid_hints_raise() -> None:
    with pytest.raises(ValueError, match="invalid action"):
        audit_middleware.set_action("Not An Action")
    with pytest.raises(ValueError, match="actor type"):
        audit_middleware.set_actor("u", type="robot")  # type: ignore[arg-type]


def test_int_ids_from_handler_code_are_recorded_as_text(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    """Database keys are often ints: under both builds they become the schema's text, and the
    handler never sees a TypeError (compiled code checks annotations at run time)."""
    app = FastAPI()

    @app.post("/orgs/{org_id}/docs/{doc_id}")
    async def handler(org_id: int, doc_id: int) -> dict[str, bool]:
        audit_middleware.set_actor(7, email=None)
        audit_middleware.set_target("doc", doc_id)
        audit_middleware.set_org(org_id)
        return {"ok": True}

    auditor = make_auditor()
    response = TestClient(AuditMiddleware(app, auditor=auditor)).post("/orgs/42/docs/9")
    assert response.status_code == 200
    (event,) = auditor.wait_for(1)
    assert (event.actor.id, event.target, event.org_id) == ("7", Target("doc", "9"), "42")


def test_record_and_resolvers_with_int_ids_deliver_text(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    """An Actor or Target made with int ids (by record()'s caller or an actor resolver) is
    delivered with text ids under both builds, never lost in the compiled one."""

    def resolver(scope: object) -> Actor:
        return Actor(id=11, email=5)  # type: ignore[arg-type]

    auditor = make_auditor(actor_resolvers=[resolver], org_resolvers=[lambda scope: 5])
    auditor.record("doc.updated", actor=Actor(id=7), target=Target("doc", 9), org_id=42)  # type: ignore[arg-type]
    TestClient(AuditMiddleware(_app(), auditor=auditor)).get("/read")
    recorded, request = sorted(auditor.wait_for(2), key=lambda e: e.action)
    assert (recorded.actor.id, recorded.target, recorded.org_id) == ("7", Target("doc", "9"), "42")
    assert (request.action, request.actor) == ("report.downloaded", Actor("11", email="5"))
    assert request.org_id == "5"
    assert auditor.stats().build_errors == 0
