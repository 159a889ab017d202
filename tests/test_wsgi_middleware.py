"""The WSGI middleware on real apps and a real server (waitress)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import pytest
from flask import Flask, jsonify, request

import audit_middleware
from audit_middleware import AuditWSGIMiddleware, Rule
from tests.conftest import MemoryAuditor, serve_wsgi


def _flask_app() -> Flask:
    app = Flask(__name__)

    @app.post("/orgs/<org_id>/api-keys")
    def create_key(org_id: str) -> Any:
        name = (request.get_json(silent=True) or {}).get("name", "")
        return jsonify({"id": f"key_{name}", "org_id": org_id}), 201

    @app.delete("/orgs/<org_id>/members/<int:user_id>")
    def remove(org_id: str, user_id: int) -> Any:
        audit_middleware.set_actor(request.headers.get("x-user", "u_x"))
        return "", 204

    @app.post("/boom")
    def boom() -> Any:
        raise RuntimeError("secret detail")

    return app


def _call(app: Any, method: str = "POST", path: str = "/x", **environ: Any) -> tuple[str, bytes]:
    env: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, **environ}
    setup_testing_defaults(env)
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[-1], body


def test_flask_one_line_with_route_templates_over_waitress(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    rules = [
        Rule("POST", "/orgs/{org_id}/api-keys", "org.api_key.created", "api_key", "response.id"),
        Rule(
            "DELETE",
            "/orgs/{org_id}/members/{user_id}",
            "org.member.removed",
            "user",
            "path.user_id",
        ),
    ]
    auditor = make_auditor(rules=rules)
    app = _flask_app()
    app.wsgi_app = AuditWSGIMiddleware(app.wsgi_app, auditor=auditor)  # type: ignore[method-assign]
    with serve_wsgi(app) as url, httpx.Client(base_url=url, headers={"user-agent": "t/1"}) as c:
        assert c.post("/orgs/o1/api-keys", json={"name": "ci"}).status_code == 201
        assert c.delete("/orgs/o1/members/7", headers={"x-user": "u_admin"}).status_code == 204
    created, removed = auditor.wait_for(2)
    assert created.action == "org.api_key.created"
    assert created.request is not None
    assert created.request.route == "/orgs/{org_id}/api-keys"
    assert created.org_id == "o1"
    assert created.target is not None
    assert created.target.id == "key_ci"
    assert removed.target is not None
    assert (removed.target.type, removed.target.id) == ("user", "7")
    assert removed.actor.id == "u_admin"
    for event in (created, removed):
        assert event.client is not None
        assert (event.client.ip, event.client.user_agent) == ("127.0.0.1", "t/1")


def test_flask_error_page_is_recorded_and_unchanged(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    bare = _flask_app()
    wrapped = _flask_app()
    wrapped.wsgi_app = AuditWSGIMiddleware(wrapped.wsgi_app, auditor=auditor)  # type: ignore[method-assign]
    outcomes = []
    for app in (bare, wrapped):
        with serve_wsgi(app) as url:
            r = httpx.post(url + "/boom")
            outcomes.append((r.status_code, r.content))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == 500
    (event,) = auditor.wait_for(1)
    assert (event.outcome, event.request.status) == ("error", 500)  # type: ignore[union-attr]
    assert "secret detail" not in str(event.to_dict())


def test_exception_before_start_response_is_recorded_and_reraised(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise ValueError("early")

    with pytest.raises(ValueError, match="early"):
        _call(AuditWSGIMiddleware(app, auditor=auditor))
    (event,) = auditor.wait_for(1)
    assert (event.outcome, event.request.status) == ("error", 500)  # type: ignore[union-attr]
    assert event.error is not None
    assert event.error.type == "ValueError"


def test_exception_while_streaming_is_recorded_and_close_is_honoured(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"part"
            raise OSError("disk")

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    with pytest.raises(OSError, match="disk"):
        _call(AuditWSGIMiddleware(app, auditor=auditor))
    assert closed == [True]
    (event,) = auditor.wait_for(1)
    assert event.outcome == "error"
    assert event.request is not None
    assert (event.request.status, event.request.completed) == (200, False)


def test_streaming_is_not_buffered_over_waitress(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            yield b"first\n"
            release.wait(10)
            yield b"second\n"

        return body()

    with serve_wsgi(AuditWSGIMiddleware(app, auditor=auditor)) as url:
        with httpx.stream("POST", url + "/s", timeout=10) as response:
            chunks = response.iter_bytes()
            assert next(chunks).startswith(b"first")
            release.set()
            assert b"".join(chunks).endswith(b"second\n")
        (event,) = auditor.wait_for(1)
    assert event.request is not None
    assert event.request.completed is True


def test_thread_safety_under_a_threaded_server(make_auditor: Callable[..., MemoryAuditor]) -> None:
    """Concurrent requests never mix up their actors, targets or orgs."""
    auditor = make_auditor()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        user = environ["HTTP_X_USER"]
        audit_middleware.set_actor(user)
        time.sleep(0.002)  # let other threads interleave
        audit_middleware.set_target("doc", "doc_" + user)
        start_response("200 OK", [])
        return [user.encode()]

    n = 60
    with serve_wsgi(AuditWSGIMiddleware(app, auditor=auditor), threads=8) as url:

        def hit(i: int) -> None:
            httpx.post(url + "/docs", headers={"x-user": f"u{i}"})

        threads = [threading.Thread(target=hit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events = auditor.wait_for(n)
    assert len(events) == n
    for event in events:
        assert event.target is not None
        assert event.target.id == "doc_" + str(event.actor.id)


def test_body_source_reads_only_what_the_app_read(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    rule = Rule(
        "POST", "/auth/password-reset", "user.password.reset_requested", "user", "body.email"
    )
    auditor = make_auditor(rules=[rule])
    app = Flask(__name__)

    @app.post("/auth/password-reset")
    def reset() -> Any:
        request.get_json(silent=True)
        return {"status": "sent"}, 202

    app.wsgi_app = AuditWSGIMiddleware(app.wsgi_app, auditor=auditor)  # type: ignore[method-assign]
    with serve_wsgi(app) as url:
        body = {"email": "a@example.test", "password": "hunter2"}
        assert httpx.post(url + "/auth/password-reset", json=body).status_code == 202
        form = {"email": "b@example.test"}
        assert httpx.post(url + "/auth/password-reset", data=form).status_code == 202
    first, second = auditor.wait_for(2)
    assert first.target is not None
    assert first.target.id == "a@example.test"
    assert second.target is not None
    assert second.target.id is None  # the app never read the form body
    assert "hunter2" not in str(first.to_dict())


def test_wsgi_headers_and_client(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor(trusted_proxies="1")

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("201 Created", [])
        return [b""]

    _call(
        AuditWSGIMiddleware(app, auditor=auditor),
        path="/caf\xc3\xa9",
        REMOTE_ADDR="10.0.0.5",
        HTTP_X_FORWARDED_FOR="198.51.100.1",
        HTTP_USER_AGENT="ua\r\nforged",
        HTTP_AUTHORIZATION="Bearer secret-token",
        QUERY_STRING="token=abc&page=2",
    )
    (event,) = auditor.wait_for(1)
    assert event.client is not None
    assert (event.client.ip, event.client.peer) == ("198.51.100.1", "10.0.0.5")
    assert event.client.user_agent == "ua\\r\\nforged"
    assert event.request is not None
    assert event.request.path == "/café"
    assert event.request.query == {"token": "[REDACTED]", "page": "2"}
    assert "secret-token" not in str(event.to_dict())


def _plain_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("REQUEST_METHOD", b"POST", id="method-bytes"),
        pytest.param("PATH_INFO", b"/x", id="path-bytes"),
        pytest.param("PATH_INFO", None, id="path-none"),
        pytest.param("SCRIPT_NAME", 5, id="script-int"),
        pytest.param("QUERY_STRING", b"page=2", id="query-bytes"),
        pytest.param("QUERY_STRING", "q=\u00e9\u4e2d", id="query-not-latin-1"),
        pytest.param("REMOTE_ADDR", 42, id="remote-addr-int"),
        pytest.param("REMOTE_ADDR", "", id="remote-addr-empty"),
        pytest.param("HTTP_USER_AGENT", b"bytes-ua", id="ua-bytes"),
        pytest.param("HTTP_USER_AGENT", "\u4e2d\u6587", id="ua-not-latin-1"),
        pytest.param("HTTP_X_NOTE", 7, id="header-int"),
        pytest.param(7, "int key", id="key-int"),
    ],
)
def test_a_malformed_environ_member_is_audited_not_lost(
    make_auditor: Callable[..., MemoryAuditor], key: Any, value: object
) -> None:
    """WSGI servers and middleware in front can break PEP 3333's types too: each request is
    still audited, under both builds (the compiled one checks annotations at run time)."""
    auditor = make_auditor(headers=["x-note"])
    audited = AuditWSGIMiddleware(_plain_app, auditor=auditor)

    def app(environ: dict[Any, Any], start_response: Any) -> Iterable[bytes]:
        environ[key] = value  # what a broken server or middleware in front would pass
        return audited(environ, start_response)

    status, body = _call(app)
    assert (status, body) == ("201 Created", b"ok")
    (event,) = auditor.wait_for(1)
    assert event.outcome == "success"
    assert event.request is not None
    assert auditor.stats().build_errors == 0
    if key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING") and isinstance(value, bytes):
        assert (event.request.method, event.request.path) == ("POST", "/x")
    if key == "QUERY_STRING" and value == b"page=2":
        assert event.request.query == {"page": "2"}
    if key == "HTTP_USER_AGENT" and value == b"bytes-ua":
        assert event.client is not None
        assert event.client.user_agent == "bytes-ua"
