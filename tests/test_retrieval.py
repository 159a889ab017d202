"""The HTTP retrieval API and its Python client, over a real uvicorn server and a real archive.

The archive is written by the real ``ArchiveExporter`` (``tests.test_query.write``); the router
is served by uvicorn on loopback and called with httpx and :class:`AuditLogClient`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from audit_middleware import Actor, AuditEvent, ClientInfo, Target
from audit_middleware import retrieval as retrieval_module
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.client import AuditLogAPIError, AuditLogClient
from audit_middleware.query import ArchiveReader, Page
from audit_middleware.retrieval import CSV_COLUMNS, Unauthenticated, audit_log_router
from tests.conftest import assert_valid, serve
from tests.test_query import DAY0, EPOCH, event, newest_first, write

T = DAY0 + timedelta(hours=12)


def injection_event() -> AuditEvent:
    at = T + timedelta(days=1, hours=3)
    ns = (at - EPOCH) // timedelta(microseconds=1) * 1000
    built = AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action="doc.shared",
        outcome="success",
        actor=Actor('=HYPERLINK("http://evil")', email="@SUM(1+1)"),
        org_id="acme",
        target=Target("doc", "-2+3"),
        client=ClientInfo("203.0.113.9", "203.0.113.9", "+cmd|' /C calc'!A0"),
        error=None,
    )
    assert_valid(built)
    return built


ACME = [
    event("acme", T, action="user.login.failed", outcome="denied", ip="203.0.113.7"),
    event("acme", T + timedelta(minutes=1), action="user.login.succeeded", ip="198.51.100.1"),
    event("acme", T + timedelta(days=1), actor="u2", email="bob@acme.test"),
    event("acme", T + timedelta(days=1, minutes=1), action="user.login.failed", outcome="denied"),
    event("acme", T + timedelta(days=2), action="org.api_key.created", actor="u2"),
    injection_event(),
]
GLOBEX = [
    event("globex", T + timedelta(minutes=2), action="user.login.failed", outcome="denied"),
    event("globex", T + timedelta(days=2, minutes=5), actor="secret-globex-actor"),
]
TOKENS = {
    "admin-acme": ("acme", True),
    "member-acme": ("acme", False),
    "admin-globex": ("globex", True),
}


class SpyReader(ArchiveReader):
    """An ArchiveReader that counts its calls."""

    calls = 0

    def get_audit_logs(self, org_id: str, **kwargs: Any) -> Page:
        type(self).calls += 1
        return super().get_audit_logs(org_id, **kwargs)


async def authorize(request: Request, org_id: str) -> bool:
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ")
    if token not in TOKENS:
        raise Unauthenticated("missing or unknown bearer token")
    org, admin = TOKENS[token]
    return org == org_id and admin


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("retrieval") / "archive"
    write(root, [*ACME, *GLOBEX], "jsonl")
    with serve(audit_log_router(SpyReader(str(root)), authorize=authorize)) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_authorize_is_required(tmp_path: Path) -> None:
    reader = ArchiveReader(str(tmp_path))
    with pytest.raises(TypeError):
        audit_log_router(reader)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="authorize is required"):
        audit_log_router(reader, authorize=None)  # type: ignore[arg-type]


def test_admin_pages_through_the_org_newest_first(http: httpx.Client) -> None:
    before = SpyReader.calls
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(10):
        response = http.get("/orgs/acme/audit-logs", params=params, headers=bearer("admin-acme"))
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"data", "next_cursor"}
        assert len(body["data"]) <= 2
        seen += [row["id"] for row in body["data"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == newest_first(ACME)
    assert SpyReader.calls == before + 3  # the spy sees reads, so the 403 tests can rely on it


def test_filters_reach_the_reader(http: httpx.Client) -> None:
    response = http.get(
        "/orgs/acme/audit-logs",
        params={"action": "user.login.*", "outcome": "denied", "since": "2026-11-02T00:00:00Z"},
        headers=bearer("admin-acme"),
    )
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["data"]] == [ACME[3].id]


def test_client_get_and_iterate(base_url: str) -> None:
    with AuditLogClient(base_url, token="admin-acme") as client:
        page = client.orgs.get_audit_logs(org_id="acme")
        assert [row["id"] for row in page] == newest_first(ACME)
        first = client.orgs.get_audit_logs(org_id="acme", limit=1)
        assert [row["id"] for row in first] == newest_first(ACME)[:1]
        rows = list(client.orgs.iter_audit_logs(org_id="acme", limit=2))
        assert [row["id"] for row in rows] == newest_first(ACME)
        actor = list(client.orgs.iter_audit_logs(org_id="acme", actor="bob@acme.test", limit=1))
        assert [row["id"] for row in actor] == [ACME[2].id]
        windowed = client.orgs.get_audit_logs(
            org_id="acme", since=T, until=T + timedelta(days=1), action="user.login.succeeded"
        )
        assert [row["id"] for row in windowed] == [ACME[1].id]


@pytest.mark.parametrize(
    "path",
    [
        "/orgs/acme/audit-logs",
        "/orgs/acme/audit-logs/export.csv",
        "/orgs/acme/audit-logs/export.jsonl",
    ],
)
def test_non_admin_is_forbidden_and_nothing_is_read(http: httpx.Client, path: str) -> None:
    before = SpyReader.calls
    response = http.get(path, headers=bearer("member-acme"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "data" not in response.json()
    for item in ACME:
        assert item.id not in response.text
    assert SpyReader.calls == before
    client = AuditLogClient(str(http.base_url), token="member-acme")
    with client, pytest.raises(AuditLogAPIError) as info:
        client.orgs.get_audit_logs(org_id="acme")
    assert (info.value.status, info.value.code) == (403, "forbidden")
    assert SpyReader.calls == before


def test_unauthenticated_is_401(http: httpx.Client) -> None:
    before = SpyReader.calls
    for headers in ({}, bearer("forged")):
        response = http.get("/orgs/acme/audit-logs", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    assert SpyReader.calls == before


def test_other_orgs_never_appear(http: httpx.Client) -> None:
    globex_ids = {item.id for item in GLOBEX}
    response = http.get("/orgs/acme/audit-logs", headers=bearer("admin-acme"))
    assert not globex_ids & {row["id"] for row in response.json()["data"]}
    assert "secret-globex-actor" not in response.text
    export = http.get("/orgs/acme/audit-logs/export.jsonl", headers=bearer("admin-acme"))
    assert "secret-globex-actor" not in export.text
    # An acme admin asking for globex is refused; globex's admin sees only globex.
    assert http.get("/orgs/globex/audit-logs", headers=bearer("admin-acme")).status_code == 403
    own = http.get("/orgs/globex/audit-logs", headers=bearer("admin-globex")).json()["data"]
    assert [row["id"] for row in own] == newest_first(GLOBEX)


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"since": "2026-11-01T00:00:00"},  # naive
        {"since": "2026-11-03T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"outcome": "maybe"},
        {"cursor": "not-a-cursor"},
    ],
)
def test_invalid_parameters_are_422(http: httpx.Client, params: dict[str, str]) -> None:
    response = http.get("/orgs/acme/audit-logs", params=params, headers=bearer("admin-acme"))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["message"]


def test_cursor_of_another_query_is_422(http: httpx.Client, base_url: str) -> None:
    first = http.get("/orgs/acme/audit-logs", params={"limit": "1"}, headers=bearer("admin-acme"))
    cursor = first.json()["next_cursor"]
    assert cursor
    other = http.get(
        "/orgs/acme/audit-logs",
        params={"limit": "1", "cursor": cursor, "action": "doc.updated"},
        headers=bearer("admin-acme"),
    )
    assert other.status_code == 422
    assert "cursor" in other.json()["error"]["message"]
    client = AuditLogClient(base_url, token="admin-acme")
    with client, pytest.raises(AuditLogAPIError) as info:
        client.orgs.get_audit_logs(org_id="acme", since="not a time")
    assert info.value.status == 422


def test_export_csv_is_filtered_and_injection_safe(http: httpx.Client) -> None:
    response = http.get(
        "/orgs/acme/audit-logs/export.csv",
        params={"since": "2026-11-02T00:00:00Z"},
        headers=bearer("admin-acme"),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="audit-logs-acme.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    expected = [e for e in ACME if e.occurred_at >= "2026-11-02"]
    assert [r["id"] for r in records] == newest_first(expected)
    shared = next(r for r in records if r["id"] == ACME[5].id)
    assert shared["actor_id"] == '\'=HYPERLINK("http://evil")'
    assert shared["actor_email"] == "'@SUM(1+1)"
    assert shared["target_id"] == "'-2+3"
    assert shared["user_agent"] == "'+cmd|' /C calc'!A0"
    assert shared["ip"] == "203.0.113.9"
    for record in records:
        for cell in record.values():
            assert not cell.startswith(("=", "+", "-", "@"))


def test_export_jsonl_follows_cursors_and_is_capped(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrieval_module, "MAX_LIMIT", 2)  # force several internal pages
    response = http.get(
        "/orgs/acme/audit-logs/export.jsonl", params={"actor": "u1"}, headers=bearer("admin-acme")
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment;")
    rows = [json.loads(line) for line in response.text.splitlines()]
    expected = [e for e in ACME if e.actor.id == "u1"]
    assert len(expected) == 3
    assert [row["id"] for row in rows] == newest_first(expected)
    assert all(row["org_id"] == "acme" for row in rows)

    monkeypatch.setattr(retrieval_module, "MAX_EXPORT_ROWS", 3)
    capped = http.get("/orgs/acme/audit-logs/export.jsonl", headers=bearer("admin-acme"))
    assert [json.loads(line)["id"] for line in capped.text.splitlines()] == newest_first(ACME)[:3]


def test_export_rejects_bad_parameters_before_streaming(http: httpx.Client) -> None:
    response = http.get(
        "/orgs/acme/audit-logs/export.csv", params={"until": "nope"}, headers=bearer("admin-acme")
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_openapi_and_unknown_routes(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {
        "/orgs/{org_id}/audit-logs",
        "/orgs/{org_id}/audit-logs/activity",
        "/orgs/{org_id}/audit-logs/export.csv",
        "/orgs/{org_id}/audit-logs/export.jsonl",
    }
    missing = http.get("/orgs/acme/nothing-here", headers=bearer("admin-acme"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
