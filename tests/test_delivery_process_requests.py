"""Process delivery: requests cross to the delivery process unbuilt, and it builds the same
events this process would have built."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jwt as pyjwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import (
    AuditMiddleware,
    Auditor,
    JWTConfig,
    Rule,
    add_metadata,
    set_actor,
    set_org,
    set_target,
)
from audit_middleware._context import RequestContext
from audit_middleware._views import RequestView
from audit_middleware._wire import Unpacker, plain_request
from tests.conftest import LineFile, MemoryAuditor, assert_valid, built_here

RULES = (
    Rule(
        "POST",
        "/orgs/{org_id}/api-keys",
        "org.api_key.created",
        target_type="api_key",
        target_id="response.data.id",
        metadata={
            "team": "query.team",
            "tenant": "header.x-tenant",
            "at": "response_header.location",
        },
    ),
    Rule("POST", "/auth/login", {"2xx": "user.login.succeeded", "401": "user.login.failed"}),
    Rule("GET", "/health", None),
)


async def _api_key(request: Request) -> Response:
    return JSONResponse({"data": {"id": "k_1"}}, status_code=201, headers={"location": "/k/k_1"})


async def _login(request: Request) -> Response:
    return PlainTextResponse("no", status_code=401)


async def _doc(request: Request) -> Response:
    set_actor("u_1", email="ana@example.com", name="Ana")
    set_target("doc", str(request.path_params["doc_id"]))
    set_org("org_9")
    add_metadata(n=1, ok=True, ratio=0.5, note="é\n\x1b[31m", password="hunter2")
    return PlainTextResponse("ok")


async def _dated(request: Request) -> Response:
    add_metadata(when=datetime.date(2026, 11, 28))  # not a plain value: built where it ran
    return PlainTextResponse("ok")


async def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def _plain(request: Request) -> Response:
    return PlainTextResponse("ok")


APP = Starlette(
    routes=[
        Route("/orgs/{org_id}/api-keys", _api_key, methods=["POST"]),
        Route("/auth/login", _login, methods=["POST"]),
        Route("/docs/{doc_id:uuid}", _doc, methods=["PUT"]),
        Route("/docs/{doc_id}", _doc, methods=["PATCH"]),
        Route("/dated", _dated, methods=["POST"]),
        Route("/boom", _boom, methods=["DELETE"]),
        Route("/unmatched/{thing}", _plain, methods=["POST"]),
        Route("/health", _plain, methods=["GET"]),
    ]
)
DOC = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _requests(auditor: Auditor) -> None:
    client = TestClient(AuditMiddleware(APP, auditor=auditor), raise_server_exceptions=False)
    headers = {"user-agent": "tests/1.0", "x-tenant": "t_7", "authorization": "Bearer a.b.c"}
    calls: list[tuple[str, str]] = [
        ("POST", "/orgs/o_1/api-keys?team=blue&token=s3cret"),
        ("POST", "/auth/login"),
        ("POST", "/auth/login"),
        ("PUT", f"/docs/{DOC}"),
        ("PATCH", "/docs/d_2"),
        ("POST", "/dated"),
        ("DELETE", "/boom"),
        ("POST", "/unmatched/x?a=1"),
        ("GET", "/health"),
    ]
    for i, (method, path) in enumerate(calls):
        client.request(method, path, headers={**headers, "x-request-id": f"r{i}"})


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    event = dict(event)
    for key in ("id", "occurred_at", "integrity"):
        del event[key]
    event["request"] = {k: v for k, v in event["request"].items() if k != "duration_ms"}
    return event


def test_requests_built_by_the_delivery_process_equal_those_built_in_the_app(
    auditors: Callable[..., Auditor],
    make_auditor: Callable[..., MemoryAuditor],
    tmp_path: Path,
) -> None:
    lines = LineFile(tmp_path / "lines.jsonl")
    auditor = auditors(exporters=[lines], rules=RULES, brute_force_threshold=2)
    built = built_here(auditor)
    _requests(auditor)
    assert auditor.force_flush(timeout=10)
    crossed = sorted(lines.rows(), key=lambda e: (e["request"] or {}).get("id") or "~")
    reference = make_auditor(rules=RULES, brute_force_threshold=2)
    _requests(reference)
    expected = sorted(
        (e.to_dict() for e in reference.wait_for(len(crossed))),
        key=lambda e: (e["request"] or {}).get("id") or "~",
    )
    assert len(crossed) == len(expected) == 8  # every request but the health check
    for got, want in zip(crossed, expected, strict=True):
        assert_valid(got)  # built in the delivery process: no observer here sees it
        assert got["id"][14] == "7"  # a UUIDv7, made where the event was built
        assert _comparable(got) == _comparable(want)
    # what crossed unbuilt did not pass through this process's builder; failed logins (the
    # brute-force watch is on), a UUID path parameter and a date in metadata were built here
    assert sorted(built) == [
        "http.post",  # POST /dated
        "http.put",  # PUT /docs/<uuid>
        "user.login.failed",
        "user.login.failed",
    ]


def _context(**fields: Any) -> tuple[RequestContext, RequestView]:
    ctx = RequestContext(cast(Any, None), {}, "POST", 1)
    ctx.status, ctx.duration_ns, ctx.completed = 200, 1000, True
    for name, value in fields.pop("ctx", {}).items():
        setattr(ctx, name, value)
    view = RequestView("POST", "/x", b"", [(b"a", b"b")], "127.0.0.1", {}, "/x")
    return ctx, view._replace(**fields)


def test_a_request_crosses_unbuilt_only_when_every_part_is_a_plain_value() -> None:
    ctx, view = _context()
    flat = plain_request(ctx, view)
    assert flat is not None
    back = Unpacker().request(flat)
    assert back.view == view
    assert (back.status, back.duration_ns, back.started_ns, back.completed) == (200, 1000, 1, True)
    not_plain = [
        _context(path_params={"id": DOC}),
        _context(path_params={1: "x"}),
        _context(peer=_Str("127.0.0.1")),
        _context(headers=[(b"a", "b")]),
        _context(ctx={"metadata": {"when": datetime.date(2026, 1, 1)}}),
        _context(ctx={"metadata": {"nested": {"a": 1}}}),
        _context(ctx={"response_body": [bytearray(b"x")]}),
        _context(ctx={"response_headers": [[b"a", b"b"]]}),
        _context(ctx={"trace": {"traceparent": 1}}),
        _context(ctx={"org_id": object()}),
    ]
    for ctx, view in not_plain:
        assert plain_request(ctx, view) is None, view


class _Str(str):
    pass


def test_secret_headers_the_builder_never_reads_stay_in_the_app_process() -> None:
    secrets = [(b"cookie", b"sid=1"), (b"authorization", b"Bearer a.b.c"), (b"x-api-key", b"k")]
    ctx, view = _context(headers=[(b"user-agent", b"ua"), *secrets])
    drop = frozenset({b"cookie", b"authorization", b"x-api-key"})
    flat = plain_request(ctx, view, drop)
    assert flat is not None
    assert flat[3] == [(b"user-agent", b"ua")]
    assert view.headers[1:] == secrets  # the request's own list is left as it was
    kept = plain_request(ctx, view, drop - {b"authorization"})  # JWT on: the bearer token
    assert kept is not None
    assert kept[3] == [(b"user-agent", b"ua"), (b"authorization", b"Bearer a.b.c")]


async def _me(request: Request) -> Response:
    return PlainTextResponse("ok")


def test_with_jwt_the_delivery_process_reads_the_actor_from_the_bearer_token(
    auditors: Callable[..., Auditor],
    make_auditor: Callable[..., MemoryAuditor],
    tmp_path: Path,
) -> None:
    secret = "s" * 32
    config = JWTConfig(key=secret, algorithms=("HS256",))
    claims = {"sub": "user_1", "email": "ada@example.com", "org_id": "org_9"}
    token = pyjwt.encode({**claims, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    app = Starlette(routes=[Route("/settings", _me, methods=["PUT"])])
    lines = LineFile(tmp_path / "lines.jsonl")
    auditor = auditors(exporters=[lines], jwt=config)
    reference = make_auditor(jwt=config)
    for each in (auditor, reference):
        client = TestClient(AuditMiddleware(app, auditor=each))
        client.put("/settings", headers={"authorization": f"Bearer {token}", "cookie": "a=b"})
    assert auditor.force_flush(timeout=10)
    (got,) = lines.rows()
    (want,) = reference.wait_for(1)
    assert got["actor"] == want.to_dict()["actor"]
    assert got["actor"]["id"] == "user_1"
    assert got["org_id"] == want.org_id == "org_9"
