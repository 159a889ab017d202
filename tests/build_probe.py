"""Print what this process's build of the hot modules produces, for ``tests/test_build.py``.

Run as ``python -m tests.build_probe``: prints one JSON object with the compiled modules, the
hot modules' files, and the bytes the chain and the renderer produce for fixed events and for
requests driven through the middleware (their random parts replaced).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from audit_middleware import (
    Actor,
    AuditEvent,
    AuditMiddleware,
    ClientInfo,
    ErrorInfo,
    RequestInfo,
    Rule,
    Target,
    compiled_modules,
)
from audit_middleware._partition import group_by_partition
from audit_middleware.integrity._chain import ChainHead, EventChain
from audit_middleware.integrity._document import canonical_json
from exporters import InMemoryExporter
from exporters._parquet_columns import NotVouched, columns

HOT = (
    "audit_middleware._asgi",
    "audit_middleware._builder",
    "audit_middleware._context",
    "audit_middleware._ids",
    "audit_middleware._lines",
    "audit_middleware._partition",
    "audit_middleware._sanitize",
    "audit_middleware._views",
    "audit_middleware._wire",
    "audit_middleware.integrity._document",
    "audit_middleware.integrity._seal",
    "exporters._parquet_columns",
)


def fixed_events() -> list[AuditEvent]:
    """Events of every shape the renderers distinguish."""
    request = RequestInfo(
        "req-1", "POST", "/orgs/acme/keys", "/orgs/{org_id}/keys", 201, 1.25, True,
        {"b": "2", "a": "1"}, {"user-agent": "ua", "accept": "*/*"},
    )  # fmt: skip
    return [
        AuditEvent("e1", "2026-11-27T10:00:00.000001Z", "user.login.failed", "denied",
                   Actor(None, "anonymous")),
        AuditEvent("e2", "2026-11-27T10:00:00.000002Z", "org.api_key.created", "success",
                   Actor("u1", "user", "ü@example.com", "Zoë \u2028"), "acme",
                   Target("api_key", "k1"), request, ClientInfo("203.0.113.9", "10.0.0.1", "ua"),
                   None, {"z": 1, "a": [1, 2.5, None], "m": {"y": True, "x": None}},
                   {"trace_id": "ab" * 16, "span_id": "cd" * 8}),
        AuditEvent("e3", "2026-11-27T10:00:00.000003Z", "http.post", "error",
                   Actor("svc", "service"), None, Target("job"), None, ClientInfo(None),
                   ErrorInfo("RuntimeError"), {}, None),
    ]  # fmt: skip


async def _drive(app: Any) -> None:
    for method, path, headers in [
        ("POST", "/auth/login", [(b"user-agent", b"probe\x1b[31m\r\n"), (b"cookie", b"s=1")]),
        ("DELETE", "/orgs/acme/api-keys/k9", [(b"x-forwarded-for", b"1.2.3.4")]),
        ("GET", "/health", []),
    ]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
            "scheme": "http", "query_string": b"token=secret&page=2", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        await app(scope, receive, send)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    status = 401 if scope["path"] == "/auth/login" else 204
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def middleware_events() -> list[dict[str, Any]]:
    """Requests through the middleware, their ids, times and durations replaced."""
    memory = InMemoryExporter()
    app = AuditMiddleware(
        _app,
        rules=[
            Rule("POST", "/auth/login",
                 {"2xx": "user.login.succeeded", "401": "user.login.failed"}),
            Rule("DELETE", "/orgs/{org_id}/api-keys/{key_id}", "org.api_key.deleted",
                 target_type="api_key", target_id="path.key_id", org="path.org_id"),
        ],
        exporters=[memory], environ={},
    )  # fmt: skip
    asyncio.run(_drive(app))
    app.auditor.shutdown(timeout=5.0)
    out = []
    for event in memory.events:
        data = event.to_dict()
        data["id"] = data["occurred_at"] = data["integrity"] = None
        data["request"]["id"] = data["request"]["duration_ms"] = None
        out.append(data)
    return out


def parquet_columns(lines: list[bytes]) -> list[list[Any]] | str:
    """The Parquet fast path's columns of ``lines``, or why it did not vouch for them."""
    try:
        return columns([line.rstrip(b"\n") for line in lines])
    except NotVouched:
        return "not vouched"


def main() -> None:
    chain = EventChain(lambda: ChainHead("probe-stream"))
    sealed = chain.seal(fixed_events())
    lines = sealed.lines or []
    report = {
        "compiled": list(compiled_modules()),
        "files": {name: sys.modules[name].__file__ for name in HOT if name in sys.modules},
        "canonical": [canonical_json(e, {"prev": "p", "seq": 1, "stream": "s"}).decode()
                      for e in fixed_events()],
        "lines": [line.decode() for line in lines],
        "parquet": parquet_columns(lines),
        "parquet_unvouched": parquet_columns([b'{"id": 1}']),
        "middleware": middleware_events(),
        "partitions": [
            [list(map(str, key)), [e.id for e in events], [line.decode() for line in lines]]
            for key, (events, lines) in group_by_partition(
                sealed[::-1], (sealed.lines or [])[::-1]
            ).items()
        ],
    }  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
