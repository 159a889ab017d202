"""The ASGI middleware on real apps: one line, pass-through, streaming, errors, disconnects."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from audit_middleware import AuditMiddleware
from examples.saas_app import RULES, create_app
from tests.conftest import MemoryAuditor, serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _starlette_app() -> Starlette:
    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"id": "w1"}, status_code=201)

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("secret detail that must not be logged")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    inner = Starlette(routes=[Route("/things/{thing_id}", create, methods=["PUT"])])
    return Starlette(
        routes=[
            Route("/widgets", create, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
            WebSocketRoute("/ws", ws),
            Mount("/api", app=inner),
        ]
    )


def test_one_line_wrap_with_no_arguments_logs_json_to_stdout() -> None:
    """`app = AuditMiddleware(app)` with nothing configured prints one JSON line per event."""
    script = (
        "import httpx, asyncio\n"
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "from audit_middleware import AuditMiddleware\n"
        "async def h(request): return PlainTextResponse('ok')\n"
        "app = Starlette(routes=[Route('/x', h, methods=['POST'])])\n"
        "app = AuditMiddleware(app)\n"
        "async def main():\n"
        "    t = httpx.ASGITransport(app=app, client=('198.51.100.7', 5000))\n"
        "    async with httpx.AsyncClient(transport=t, base_url='http://t') as c:\n"
        "        await c.post('/x', headers={'user-agent': 'ua/1'})\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_LOG_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    import orjson

    lines = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 1, out
    line = lines[0]
    assert line["event"] == line["action"] == "http.post"
    assert line["request"]["route"] == "/x"
    assert line["client"] == {"ip": "198.51.100.7", "peer": "198.51.100.7", "user_agent": "ua/1"}
    assert line["level"] == "info"


@pytest.mark.parametrize("kind", ["starlette", "fastapi", "raw"])
def test_wraps_any_asgi_app(kind: str, make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor()
    app: Any
    if kind == "starlette":
        app = _starlette_app()
    elif kind == "fastapi":
        from fastapi import FastAPI

        fastapi_app = FastAPI()

        @fastapi_app.post("/widgets", status_code=201)
        async def create() -> dict[str, str]:
            return {"id": "w1"}

        app = fastapi_app

    else:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    client = TestClient(AuditMiddleware(app, auditor=auditor))  # no lifespan: raw app has none
    assert client.post("/widgets").status_code == 201
    (event,) = auditor.wait_for(1)
    assert event.action == "http.post"
    assert event.outcome == "success"
    assert event.request is not None
    assert event.request.status == 201
    assert event.request.route == (None if kind == "raw" else "/widgets")
    assert event.request.completed is True


def test_lifespan_and_websocket_pass_through(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor()
    seen: list[str] = []

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append("startup")
        yield
        seen.append("shutdown")

    app = _starlette_app()
    app.router.lifespan_context = lambda app: _cm(lifespan(app))
    with TestClient(AuditMiddleware(app, auditor=auditor)) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello"
        client.post("/widgets")
    assert seen == ["startup", "shutdown"]
    # lifespan shutdown flushed: the event is already delivered, no wait needed
    assert [e.action for e in auditor.memory.events] == ["http.post"]


def _cm(gen: AsyncIterator[None]) -> Any:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def wrapper() -> AsyncIterator[None]:
        async for _ in gen:  # pragma: no branch - one yield
            yield

    return wrapper()


def test_mounted_route_template_includes_mount_prefix(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    with TestClient(AuditMiddleware(_starlette_app(), auditor=auditor)) as client:
        client.put("/api/things/42")
    (event,) = auditor.wait_for(1)
    assert event.request is not None
    assert event.request.route == "/api/things/{thing_id}"
    assert event.request.path == "/api/things/42"


def test_exception_before_response_is_recorded_as_500_and_reraised(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    app = AuditMiddleware(_starlette_app(), auditor=auditor)
    with TestClient(app, raise_server_exceptions=True) as client, pytest.raises(RuntimeError):
        client.post("/boom")
    (event,) = auditor.wait_for(1)
    assert event.outcome == "error"
    assert event.request is not None
    assert event.request.status == 500
    assert event.error is not None
    assert event.error.type == "RuntimeError"
    assert "secret detail" not in str(event.to_dict())


def test_exception_after_response_started_keeps_status(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("mid-stream")

    async def call() -> None:
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "headers": [],
            "client": None,
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        with pytest.raises(ValueError, match="mid-stream"):
            await AuditMiddleware(app, auditor=auditor)(scope, receive, send)

    asyncio.run(call())
    (event,) = auditor.wait_for(1)
    assert event.outcome == "error"
    assert event.request is not None
    assert (event.request.status, event.request.completed) == (200, False)
    assert event.error is not None
    assert event.error.type == "ValueError"
    assert event.client is not None
    assert event.client.ip is None  # missing client address is recorded as unknown


def test_streaming_is_not_buffered_over_a_real_server(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    """The first chunk reaches the client while the app is still producing the rest."""
    auditor = make_auditor()
    release = threading.Event()

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first\n"
            while not release.is_set():
                await asyncio.sleep(0.01)
            yield b"second\n"

        return StreamingResponse(body())

    app = AuditMiddleware(
        Starlette(routes=[Route("/s", stream, methods=["POST"])]), auditor=auditor
    )
    with serve(app) as url, httpx.stream("POST", url + "/s", timeout=10) as response:
        chunks = response.iter_bytes()
        assert next(chunks).startswith(b"first")  # arrives before the app finished
        release.set()
        assert b"".join(chunks).endswith(b"second\n")
    (event,) = auditor.wait_for(1)
    assert event.request is not None
    assert event.request.completed is True


def test_client_disconnect_mid_stream_is_recorded(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    finished = threading.Event()

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                for _ in range(500):
                    yield b"x" * 1024
                    await asyncio.sleep(0.01)
            finally:
                finished.set()

        return StreamingResponse(body())

    app = AuditMiddleware(
        Starlette(routes=[Route("/s", stream, methods=["POST"])]), auditor=auditor
    )
    with serve(app) as url:
        with httpx.stream("POST", url + "/s", timeout=10) as response:
            next(response.iter_bytes())
        assert finished.wait(10)
        (event,) = auditor.wait_for(1)
    assert event.request is not None
    assert event.request.status == 200
    assert event.request.completed is False


def test_example_app_over_uvicorn(make_auditor: Callable[..., MemoryAuditor]) -> None:
    """Login failure and success, an API key with its id from the response, all through uvicorn."""
    auditor = make_auditor(rules=RULES)
    with (
        serve(AuditMiddleware(create_app(), auditor=auditor)) as url,
        httpx.Client(base_url=url) as client,
    ):
        headers = {"user-agent": "pytest-client/1.0"}
        bad = client.post(
            "/auth/login", json={"email": "alice@acme.test", "password": "nope"}, headers=headers
        )
        assert bad.status_code == 401
        good = client.post(
            "/auth/login",
            json={"email": "alice@acme.test", "password": "correct horse"},
            headers=headers,
        )
        token = good.json()["token"]
        auth = {**headers, "authorization": f"Bearer {token}"}
        key = client.post("/orgs/org_acme/api-keys", json={"name": "ci"}, headers=auth).json()
        assert client.get("/health").status_code == 200
        assert client.post("/internal/cache/flush").status_code == 200
    events = auditor.wait_for(3)
    assert [e.action for e in events] == [
        "user.login.failed",
        "user.login.succeeded",
        "org.api_key.created",
    ]
    failed, succeeded, created = events
    assert failed.actor.type == "anonymous"
    assert failed.outcome == "denied"
    assert succeeded.actor.id == "u_alice"
    assert succeeded.org_id == "org_acme"
    assert created.actor.id == "u_alice"
    assert created.actor.email == "alice@acme.test"
    assert created.org_id == "org_acme"
    assert created.target is not None
    assert (created.target.type, created.target.id) == ("api_key", key["id"])
    for event in events:
        assert event.client is not None
        assert event.client.ip == "127.0.0.1"
        assert event.client.user_agent == "pytest-client/1.0"
        dumped = str(event.to_dict())
        assert token not in dumped
        assert "correct horse" not in dumped
        assert key["secret"] not in dumped
