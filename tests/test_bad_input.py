"""Hostile and odd requests: each gets a safe, documented result and nothing forged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_middleware import AuditMiddleware, Rule
from audit_middleware._rules import generic_action
from audit_middleware._sanitize import REDACTED
from tests.conftest import MemoryAuditor

CONTROL = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]}


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _call(
    auditor: MemoryAuditor,
    app: Any,
    *,
    method: str = "POST",
    path: str = "/x",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("203.0.113.9", 4444),
    query: bytes = b"",
) -> list[dict[str, Any]]:
    """Call the app in-process; return the messages it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "headers": headers or [],
        "client": client,
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(AuditMiddleware(app, auditor=auditor)(scope, receive, send))
    return sent


@pytest.fixture
def audited(make_auditor: Callable[..., MemoryAuditor]) -> MemoryAuditor:
    return make_auditor(headers=["host", "x-note"])


@pytest.mark.parametrize(
    ("headers", "client", "ip"),
    [
        pytest.param(
            [(b"x-forwarded-for", b"1.2.3.4")], ("203.0.113.9", 1), "203.0.113.9", id="xff"
        ),
        pytest.param(
            [(b"forwarded", b"for=1.2.3.4")], ("203.0.113.9", 1), "203.0.113.9", id="forwarded"
        ),
        pytest.param(
            [(b"x-real-ip", b"1.2.3.4")], ("203.0.113.9", 1), "203.0.113.9", id="x-real-ip"
        ),
        pytest.param([], None, None, id="no-client"),
        pytest.param([], ("/tmp/uvicorn.sock", 0), None, id="unix-socket"),
    ],
)
def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_ignored(
    audited: MemoryAuditor, headers: list[tuple[bytes, bytes]], client: Any, ip: str | None
) -> None:
    _call(audited, _ok_app, headers=headers, client=client)
    (event,) = audited.wait_for(1)
    assert event.client is not None
    assert event.client.ip == ip


def test_trusted_proxy_supplies_the_ip_and_the_peer_is_kept(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(trusted_proxies="10.0.0.0/8")
    _call(
        auditor,
        _ok_app,
        headers=[(b"x-forwarded-for", b"6.6.6.6, 198.51.100.20, 10.1.1.1")],
        client=("10.0.0.2", 1),
    )
    (event,) = auditor.wait_for(1)
    assert event.client is not None
    assert (event.client.ip, event.client.peer) == ("198.51.100.20", "10.0.0.2")


@pytest.mark.parametrize(
    ("mode", "ip"),
    [("full", "203.0.113.9"), ("truncate", "203.0.113.0"), ("omit", None)],
)
def test_ip_privacy(make_auditor: Callable[..., MemoryAuditor], mode: str, ip: str | None) -> None:
    auditor = make_auditor(ip_privacy=mode)
    _call(auditor, _ok_app)
    (event,) = auditor.wait_for(1)
    assert event.client is not None
    assert (event.client.ip, event.client.peer) == (ip, ip)


def test_giant_and_binary_headers(audited: MemoryAuditor) -> None:
    huge = b"A" * 65536
    sent = _call(
        audited,
        _ok_app,
        headers=[
            (b"user-agent", huge),
            (b"x-forwarded-for", huge),
            (b"x-note", b"\xff\xfe\x00binary\x1b[31m"),
            (b"host", b"example.test"),
        ],
    )
    assert sent[0]["status"] == 200
    (event,) = audited.wait_for(1)
    assert event.client is not None
    assert event.client.user_agent is not None
    assert len(event.client.user_agent) <= 512
    note = event.request.headers["x-note"]  # type: ignore[union-attr]
    assert not CONTROL & set(note)
    assert "\\xff" in note
    assert "\\x1b" in note
    assert len(orjson.dumps(event.to_dict())) < 8192


def test_crlf_and_ansi_in_user_agent_and_path_cannot_forge_lines(audited: MemoryAuditor) -> None:
    _call(
        audited,
        _ok_app,
        path='/x\r\n{"action":"user.login.succeeded"}\x1b[2J',
        headers=[(b"user-agent", b'curl\r\n{"forged": true}\x1b[31m')],
    )
    (event,) = audited.wait_for(1)
    line = orjson.dumps(event.to_dict())
    assert b"\n" not in line
    assert b"\r" not in line
    assert event.client is not None
    assert not CONTROL & set(event.client.user_agent or "")
    assert event.request is not None
    assert not CONTROL & set(event.request.path)


def test_percent_encoded_and_overlong_paths(audited: MemoryAuditor) -> None:
    _call(audited, _ok_app, path="/a%2F..%2F" + "b/" * 5000)
    (event,) = audited.wait_for(1)
    assert event.request is not None
    assert len(event.request.path) <= 2048
    assert event.request.path.startswith("/a%2F..%2F")


def test_secrets_in_query_headers_and_path_params_are_redacted(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    rule = Rule("POST", "/reset/{token}", "user.password.reset_completed")
    auditor = make_auditor(rules=[rule])
    _call(
        auditor,
        _ok_app,
        path="/reset/s3cr3t-reset-token-value",
        query=b"access_token=tok123&page=2&password=pw&api_key=k",
        headers=[
            (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"),
            (b"cookie", b"session=abc"),
        ],
    )
    (event,) = auditor.wait_for(1)
    dumped = orjson.dumps(event.to_dict())
    for secret in (b"s3cr3t-reset-token-value", b"tok123", b"eyJhbGci", b"session=abc", b"=pw"):
        assert secret not in dumped
    assert event.request is not None
    assert event.request.path == f"/reset/{REDACTED}"
    assert event.request.query["page"] == "2"
    assert event.request.query["access_token"] == REDACTED
    assert "authorization" not in event.request.headers


def test_an_exporter_that_raises_never_breaks_the_app(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    class Broken:
        def export(self, batch: Any) -> Any:
            raise RuntimeError("boom")

        def force_flush(self, timeout: float | None = None) -> bool:
            raise RuntimeError("boom")

        def shutdown(self, timeout: float | None = None) -> None:
            raise RuntimeError("boom")

    auditor = make_auditor(exporters=[Broken()], export_retries=0)
    for _ in range(3):
        assert _call(auditor, _ok_app)[0]["status"] == 200
    assert auditor.force_flush(timeout=5) is False
    assert auditor.stats().exporters[0].dropped == 3


def test_a_resolver_that_raises_never_breaks_the_app(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    def bad_resolver(scope: Any) -> Any:
        raise KeyError("user")

    auditor = make_auditor(actor_resolvers=[bad_resolver])
    assert _call(auditor, _ok_app)[0]["status"] == 200
    (event,) = auditor.wait_for(1)
    assert event.actor.type == "anonymous"


header_names = st.sampled_from(
    [
        b"user-agent",
        b"x-forwarded-for",
        b"forwarded",
        b"host",
        b"x-request-id",
        b"cookie",
        b"x-note",
    ]
)
header_values = st.binary(max_size=300)
paths = st.text(max_size=300).map(lambda s: "/" + s)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    path=paths,
    query=st.binary(max_size=200),
)
def test_any_headers_and_paths_give_a_safe_valid_event(
    audited: MemoryAuditor, headers: list[tuple[bytes, bytes]], path: str, query: bytes
) -> None:
    audited.memory.clear()
    sent = _call(audited, _ok_app, headers=headers, path=path, query=query)
    assert sent[0]["status"] == 200
    (event,) = audited.wait_for(1)
    line = orjson.dumps(event.to_dict())  # schema validity is checked by the autouse fixture
    assert b"\n" not in line
    assert event.client is not None
    assert event.client.ip == "203.0.113.9"  # no trust configured: headers never win
    for value in (event.client.user_agent or "", event.request.path, event.request.id):  # type: ignore[union-attr]
        assert not CONTROL & set(value)
    assert "cookie" not in event.request.headers  # type: ignore[union-attr]


# -- scopes from a buggy server --------------------------------------------------------------
# The ASGI spec types every scope member, but a buggy server (or middleware in front of ours)
# can break it. The compiled build (``make compiled``) checks its annotations at run time, so
# these run under both builds (``make unit`` and ``make unit-pure``): each request must still
# be audited, with whatever well-formed facts the scope has.

_MALFORMED_HEADERS: list[object] = [
    (b"user-agent", "a str, not bytes"),
    (b"host",),
    None,
    (b"x-request-id", 5),
    (7, b"int name"),
    [b"x-note", b"from a list"],
    (b"x-note", "str-value"),
    (b"host", b"example.test", b"third"),
    ("X-Note", b"a str name, not lowercase"),
    b"not-a-pair",
]


@pytest.mark.parametrize(
    ("member", "value"),
    [
        pytest.param("headers", _MALFORMED_HEADERS, id="header-items"),
        pytest.param("headers", tuple(_MALFORMED_HEADERS), id="header-tuple"),
        pytest.param("headers", None, id="no-headers"),
        pytest.param("headers", 42, id="headers-int"),
        pytest.param("query_string", "page=2&password=pw", id="query-str"),
        pytest.param("query_string", 42, id="query-int"),
        pytest.param("method", b"POST", id="method-bytes"),
        pytest.param("method", None, id="method-none"),
        pytest.param("path", b"/x", id="path-bytes"),
        pytest.param("path", None, id="path-none"),
        pytest.param("client", ("203.0.113.9",), id="client-short"),
        pytest.param("client", ["203.0.113.9", 4444], id="client-list"),
        pytest.param("client", (None, 4444), id="client-no-host"),
        pytest.param("client", (b"203.0.113.9", 4444), id="client-bytes"),
        pytest.param("client", 42, id="client-int"),
        pytest.param("path_params", ["org_1"], id="path-params-list"),
        pytest.param("path_params", {1: 2, "org_id": 3}, id="path-params-odd"),
        pytest.param("route", object(), id="route-object"),
        pytest.param("root_path", None, id="root-path-none"),
    ],
)
def test_a_malformed_scope_member_is_audited_not_lost(
    make_auditor: Callable[..., MemoryAuditor], member: str, value: object
) -> None:
    # A missing method means GET (the ASGI default), which this rule audits too.
    audited = make_auditor(headers=["host", "x-note"], rules=[Rule("GET", "/x", "doc.viewed")])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"host", b"ok.test")],
        "client": ("203.0.113.9", 4444),
        member: value,
    }
    asyncio.run(AuditMiddleware(_ok_app, auditor=audited)(scope, receive, send))
    assert sent[0]["status"] == 200
    (event,) = audited.wait_for(1)  # schema validity is checked by the autouse fixture
    assert event.request is not None
    assert event.client is not None
    assert b"pw" not in orjson.dumps(event.to_dict())
    if member == "headers" and isinstance(value, (list, tuple)):
        assert event.request.headers == {  # not the 3-tuple
            "x-note": "from a list, str-value, a str name, not lowercase"
        }
        assert event.client.user_agent == "a str, not bytes"
    if member == "query_string" and isinstance(value, str):
        assert event.request.query == {"page": "2", "password": REDACTED}
    if member == "client":
        host = value[0] if isinstance(value, (list, tuple)) else None
        assert event.client.ip == (host if isinstance(host, str) else None)
    if member == "method":
        assert event.request.method == ("POST" if value else "GET")
    assert audited.stats().build_errors == 0


header_items = st.one_of(
    st.tuples(header_names, header_values),
    st.tuples(header_names, st.text(max_size=50)),
    st.lists(st.one_of(header_names, header_values), min_size=0, max_size=3),
    st.tuples(st.integers(), header_values),
    st.none(),
    st.binary(max_size=4),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=st.lists(header_items, max_size=8))
def test_any_header_items_from_a_buggy_server_give_an_event(
    audited: MemoryAuditor, headers: list[Any]
) -> None:
    audited.memory.clear()
    assert _call(audited, _ok_app, headers=headers)[0]["status"] == 200
    (event,) = audited.wait_for(1)
    assert event.client is not None
    assert event.client.ip == "203.0.113.9"
    assert "cookie" not in event.request.headers  # type: ignore[union-attr]
    assert audited.stats().build_errors == 0


def test_record_inside_a_request_with_malformed_path_params(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_params"] = ["org_1"]  # a buggy router
        auditor.record("doc.exported")
        await _ok_app(scope, receive, send)

    assert _call(auditor, app)[0]["status"] == 200
    events = auditor.wait_for(2)
    assert {e.action for e in events} == {"doc.exported", generic_action("POST")}


@pytest.mark.parametrize(
    ("status", "recorded"),
    [("201", 201), (201.0, 201), (b"201", 201), ("OK", 500), (None, 500), (float("nan"), 500)],
)
def test_a_buggy_apps_status_is_passed_on_and_recorded_as_a_number(
    make_auditor: Callable[..., MemoryAuditor], status: object, recorded: int
) -> None:
    auditor = make_auditor()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = _call(auditor, app)
    assert sent[0]["status"] is status  # the server's to judge, untouched
    (event,) = auditor.wait_for(1)
    assert event.request is not None
    assert event.request.status == recorded


@pytest.mark.parametrize(
    ("body", "target_id"),
    [
        pytest.param(b'{"id": "k1"}', "k1", id="bytes"),
        pytest.param(bytearray(b'{"id": "k1"}'), "k1", id="bytearray"),
        pytest.param(memoryview(b'{"id": "k1"}'), "k1", id="memoryview"),
        pytest.param('{"id": "k1"}', None, id="str"),
        pytest.param(None, None, id="none"),
    ],
)
def test_a_buggy_apps_response_body_never_breaks_the_app(
    make_auditor: Callable[..., MemoryAuditor], body: object, target_id: str | None
) -> None:
    rule = Rule("POST", "/x", "org.api_key.created", target_type="api_key", target_id="response.id")
    auditor = make_auditor(rules=[rule])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})

    sent = _call(auditor, app)
    assert sent[1]["body"] is body  # passed on untouched: the server's to judge
    (event,) = auditor.wait_for(1)
    assert event.target is not None
    assert (event.target.type, event.target.id) == ("api_key", target_id)


@pytest.mark.parametrize(
    ("body", "target_id"),
    [(bytearray(b'{"email": "a@b.test"}'), "a@b.test"), ('{"email": "a@b.test"}', None)],
)
def test_a_buggy_servers_request_body_never_breaks_the_app(
    make_auditor: Callable[..., MemoryAuditor], body: object, target_id: str | None
) -> None:
    rule = Rule("POST", "/x", "user.login.succeeded", target_type="user", target_id="body.email")
    auditor = make_auditor(rules=[rule])
    received: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await _ok_app(scope, receive, send)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    headers = [(b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    asyncio.run(AuditMiddleware(app, auditor=auditor)(scope, receive, send))
    assert received[0]["body"] is body
    (event,) = auditor.wait_for(1)
    assert event.target is not None
    assert event.target.id == target_id
