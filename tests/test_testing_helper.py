"""The public test helper: capture_audit_events()."""

from __future__ import annotations

import io

from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware, Rule
from audit_middleware.testing import capture_audit_events
from exporters import StructlogExporter


async def _app(scope: object, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 401, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


def test_captures_synchronously_and_does_not_deliver_by_default() -> None:
    out = io.BytesIO()
    rules = [Rule("POST", "/auth/login", {"denied": "user.login.failed"})]
    app = AuditMiddleware(_app, rules=rules, exporters=[StructlogExporter(output=out)], environ={})
    client = TestClient(app)
    with capture_audit_events() as events:
        client.post("/auth/login")
        assert events.actions == ["user.login.failed"]  # no flush needed
    assert events.of("user.login.failed")[0].outcome == "denied"
    app.auditor.force_flush(5)
    assert out.getvalue() == b""
    with capture_audit_events(deliver=True) as delivered:
        client.post("/auth/login")
    app.auditor.force_flush(5)
    assert len(delivered) == 1
    assert out.getvalue().count(b"\n") == 1
    app.auditor.shutdown(5)
