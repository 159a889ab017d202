"""The dashboard's server side: the activity endpoint, the page, its assets and headers.

The archive is written by the real ``ArchiveExporter`` (``tests.test_query.write``) with events
built by hand at fixed offsets from a day three days ago (the dashboard's chart defaults to the
last 30 days). The brute-force alert is produced by the real ``BruteForceDetector`` and built
by the real ``EventBuilder.alert_event``. The router runs under uvicorn and is called with httpx.
The browser tests (``tests/test_dashboard_browser.py``) reuse this data set.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from audit_middleware import (
    Actor,
    AuditEvent,
    Auditor,
    BruteForcePolicy,
    ClientInfo,
    Target,
    _dashboard,
)
from audit_middleware._bruteforce import BruteForceDetector
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.query import ArchiveReader, Page
from audit_middleware.retrieval import Unauthenticated, audit_log_router
from tests.conftest import assert_valid, serve
from tests.test_query import EPOCH, newest_first, write

# -- the data set ----------------------------------------------------------------------------

#: Midnight UTC three days ago: every event is in the past and within the last 30 days.
DAY = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
HOSTILE_UA = "<img src=x onerror=alert(1)>"
HOSTILE_ACTOR = "<script>window.__pwned=1</script>"
HOSTILE_EMAIL = '"><img src=x onerror=alert(2)>'
HOSTILE_TARGET = "<b>bold</b>&amp;"
VICTIM = "victim<svg/onload=alert(3)>@acme.test"
SECRET = "secret-globex-actor"


def make(
    org: str,
    at: datetime,
    action: str,
    *,
    outcome: str = "success",
    actor: Actor | None = None,
    target: Target | None = None,
    ip: str = "198.51.100.1",
    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) test",
) -> AuditEvent:
    """An event as the middleware builds it, at ``at``."""
    ns = (at - EPOCH) // timedelta(microseconds=1) * 1000
    built = AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action=action,
        outcome=outcome,  # type: ignore[arg-type]
        actor=actor or Actor("u1", email="alice@acme.test"),
        org_id=org,
        target=target or Target("doc", "d1"),
        client=ClientInfo(ip, ip, user_agent),
        error=None,
    )
    assert_valid(built)
    return built


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


VIEWS = [make("acme", at(0, hour, 5), "doc.viewed") for hour in range(24)]
FAILED_BURST = [
    make(
        "acme",
        at(1, 9, minute),
        "user.login.failed",
        outcome="denied",
        actor=Actor(None, type="anonymous"),
        target=Target("user", VICTIM),
        ip=f"203.0.113.{10 + minute}",
        user_agent="python-requests/2.32",
    )
    for minute in range(5)
]
FAILED_OTHER = make(
    "acme",
    at(2, 7, 30),
    "user.login.failed",
    outcome="failure",
    actor=Actor("u2", email="bob@acme.test"),
    target=Target("user", "bob@acme.test"),
)
DENIED = [
    make(
        "acme",
        when,
        "org.settings.updated",
        outcome="denied",
        actor=Actor("u3", email="carol@acme.test"),
        target=Target("org_settings", "acme"),
        ip="192.0.2.44",
    )
    for when in (at(1, 14), at(1, 14, 30), at(2, 8))
]
HOSTILE = make(
    "acme",
    at(2, 10),
    "doc.shared",
    actor=Actor(HOSTILE_ACTOR, email=HOSTILE_EMAIL),
    target=Target("doc", HOSTILE_TARGET),
    ip="203.0.113.9",
    user_agent=HOSTILE_UA,
)
BOB = [
    make("acme", at(2, hour), "doc.updated", actor=Actor("u2", email="bob@acme.test"))
    for hour in (11, 12)
]


def brute_force_alert(failures: Sequence[AuditEvent]) -> AuditEvent:
    """The alert event the Auditor emits for ``failures``, timed one second after the last."""
    detector = BruteForceDetector(BruteForcePolicy(threshold=5, window_seconds=300))
    alerts = [alert for event in failures for alert in detector.observe(event)]
    assert len(alerts) == 1, alerts  # five IPs, one account: only the account dimension fires
    auditor = Auditor(exporters=[], environ={})
    try:
        built = auditor.builder.alert_event(alerts[0])
    finally:
        auditor.shutdown(timeout=2)
    ns = (at(1, 9, 4, 1) - EPOCH) // timedelta(microseconds=1) * 1000
    alert = built._replace(id=uuid7(ns), occurred_at=format_timestamp(ns))
    assert_valid(alert)
    return alert


ALERT = brute_force_alert(FAILED_BURST)
ACME: list[AuditEvent] = [
    *VIEWS,
    *FAILED_BURST,
    FAILED_OTHER,
    *DENIED,
    HOSTILE,
    *BOB,
    ALERT,
]
GLOBEX = [
    make("globex", at(1, 9, 2), "user.login.failed", outcome="denied", actor=Actor(SECRET)),
    make("globex", at(2, 9), "doc.viewed", actor=Actor(SECRET), user_agent=SECRET),
]
FAILED_LOGINS = [*FAILED_BURST, FAILED_OTHER]

# -- access ----------------------------------------------------------------------------------

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


def authorize(request: Request, org_id: str) -> bool:
    """Bearer token (API clients) or ``session`` cookie (the browser); only org admins."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    token = token or request.cookies.get("session", "")
    if token not in TOKENS:
        raise Unauthenticated("log in first")
    org, admin = TOKENS[token]
    return org == org_id and admin


def build_archive(root: Path) -> ArchiveReader:
    write(root, [*ACME, *GLOBEX], "jsonl")
    return SpyReader(str(root))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reader = build_archive(tmp_path_factory.mktemp("dashboard-api") / "archive")
    with serve(audit_log_router(reader, authorize=authorize)) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer admin-acme"}
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
        yield client


def activity(http: httpx.Client, org: str = "acme", **params: str) -> dict[str, Any]:
    response = http.get(f"/orgs/{org}/audit-logs/activity", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- activity --------------------------------------------------------------------------------


def test_hourly_counts_over_one_day(http: httpx.Client) -> None:
    body = activity(http, since=iso(at(1, 0)), until=iso(at(2, 0)))
    assert (body["since"], body["until"], body["bucket"]) == (iso(at(1, 0)), iso(at(2, 0)), "hour")
    buckets = body["buckets"]
    assert [b["start"] for b in buckets] == [iso(at(1, hour)) for hour in range(24)]
    nonzero = {
        b["start"]: (b["failed_logins"], b["denied"])
        for b in buckets
        if any((b["failed_logins"], b["denied"]))
    }
    # The five failed logins are outcome denied but are counted once, as failed logins.
    assert nonzero == {iso(at(1, 9)): (5, 0), iso(at(1, 14)): (0, 2)}
    assert body["totals"] == {"failed_logins": 5, "denied": 2, "alerts": 1}
    [alert] = body["alerts"]
    assert alert["id"] == ALERT.id
    assert alert["occurred_at"] == ALERT.occurred_at
    assert alert["target"] == {"type": "user", "id": VICTIM.lower()}
    assert alert["dimension"] == "account"
    assert alert["failures"] == 5
    assert alert["window_seconds"] == 300
    assert alert["first_failure_at"] == FAILED_BURST[0].occurred_at
    assert alert["last_failure_at"] == FAILED_BURST[-1].occurred_at
    assert body["scan"]["truncated"] is False
    assert body["scan"]["complete_from"] is None


def test_daily_counts_and_every_bucket_present(http: httpx.Client) -> None:
    body = activity(http, since=iso(at(0, 0)), until=iso(at(3, 0)), bucket="day")
    assert body["bucket"] == "day"
    counts = [(b["start"], b["failed_logins"], b["denied"]) for b in body["buckets"]]
    assert counts == [
        (iso(at(0, 0)), 0, 0),
        (iso(at(1, 0)), 5, 2),
        (iso(at(2, 0)), 1, 1),
    ]
    assert body["totals"] == {"failed_logins": 6, "denied": 3, "alerts": 1}


def test_default_range_is_the_last_30_days(http: httpx.Client) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    body = activity(http)
    until = datetime.fromisoformat(body["until"])
    since = datetime.fromisoformat(body["since"])
    assert before <= until <= datetime.now(UTC)
    assert until - since == timedelta(days=30)
    assert body["bucket"] == "day"
    assert len(body["buckets"]) in (30, 31)
    assert body["totals"] == {"failed_logins": 6, "denied": 3, "alerts": 1}


def test_since_alone_ends_now_and_picks_hours(http: httpx.Client) -> None:
    since = datetime.now(UTC) - timedelta(hours=5)
    body = activity(http, since=since.isoformat())
    assert body["bucket"] == "hour"
    assert len(body["buckets"]) in (5, 6, 7)
    assert body["totals"] == {"failed_logins": 0, "denied": 0, "alerts": 0}


def test_other_orgs_never_count(http: httpx.Client) -> None:
    acme = activity(http, since=iso(at(0, 0)), until=iso(at(3, 0)))
    assert acme["totals"]["failed_logins"] == len(FAILED_LOGINS)
    globex_http = httpx.Client(
        base_url=http.base_url, headers={"Authorization": "Bearer admin-globex"}, timeout=30
    )
    with globex_http:
        globex = activity(globex_http, "globex", since=iso(at(0, 0)), until=iso(at(3, 0)))
    assert globex["totals"] == {"failed_logins": 1, "denied": 0, "alerts": 0}
    assert SECRET not in str(acme)


def test_scan_follows_cursors(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dashboard, "MAX_LIMIT", 2)  # pages of two events
    before = SpyReader.calls
    body = activity(http, since=iso(at(0, 0)), until=iso(at(3, 0)), bucket="day")
    assert body["totals"] == {"failed_logins": 6, "denied": 3, "alerts": 1}
    assert body["scan"]["truncated"] is False
    # 6 failed logins (3 pages), 8 denied (5 logins + 3 others: 4 pages), 1 alert (1 page).
    assert SpyReader.calls - before == 3 + 4 + 1
    assert body["scan"]["events_read"] == 6 + 8 + 1


def test_scan_cap_is_reported(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dashboard, "MAX_ACTIVITY_EVENTS", 3)
    body = activity(http, since=iso(at(0, 0)), until=iso(at(3, 0)), bucket="day")
    scan = body["scan"]
    assert scan["truncated"] is True
    assert scan["max_events"] == 3
    assert scan["events_read"] == 3 + 3 + 1
    # Failed logins newest first: FAILED_OTHER, then the burst's last two. Denied newest first:
    # DENIED[2] (day 2), DENIED[1], DENIED[0] (the burst's denied logins are older).
    failed_seen = [FAILED_OTHER, FAILED_BURST[4], FAILED_BURST[3]]
    assert scan["complete_from"] == max(failed_seen[-1].occurred_at, DENIED[0].occurred_at)
    assert body["totals"] == {"failed_logins": 3, "denied": 3, "alerts": 1}


@pytest.mark.parametrize(
    "params",
    [
        {"since": "last week"},
        {"until": "2026-11-01T00:00:00"},  # naive
        {"since": "2026-11-03T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
        {"bucket": "week"},
        {"since": "2020-01-01T00:00:00Z", "until": "2021-01-01T00:00:00Z", "bucket": "hour"},
    ],
)
def test_invalid_parameters_are_422(http: httpx.Client, params: dict[str, str]) -> None:
    response = http.get("/orgs/acme/audit-logs/activity", params=params)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["message"]


def test_empty_range_has_one_empty_bucket(http: httpx.Client) -> None:
    moment = iso(at(1, 9))
    body = activity(http, since=moment, until=moment)
    assert body["buckets"] == [{"start": moment, "failed_logins": 0, "denied": 0}]
    assert body["alerts"] == []


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [("member-acme", 403, "forbidden"), ("admin-globex", 403, "forbidden"), (None, 401, None)],
)
def test_activity_needs_authorization(
    base_url: str, token: str | None, status: int, code: str | None
) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    before = SpyReader.calls
    response = httpx.get(f"{base_url}/orgs/acme/audit-logs/activity", headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == (code or "unauthenticated")
    assert "buckets" not in response.text
    assert ALERT.id not in response.text
    assert SpyReader.calls == before


# -- the page and its assets -----------------------------------------------------------------


def test_dashboard_page_and_security_headers(http: httpx.Client) -> None:
    response = http.get("/orgs/acme/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    text = response.text
    assert '<script type="module" src="dashboard/app.js"></script>' in text
    assert "<script>" not in text  # no inline script, nothing the CSP would have to allow
    assert "http://" not in text
    assert "https://" not in text  # no CDN
    for event in ACME:
        assert event.id not in text  # the page itself holds no data


@pytest.mark.parametrize(
    ("name", "media"),
    [("app.js", "text/javascript"), ("style.css", "text/css")],
)
def test_assets_are_served_locally(http: httpx.Client, name: str, media: str) -> None:
    response = http.get(f"/orgs/acme/dashboard/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "https://" not in response.text
    assert "innerHTML" not in response.text
    assert "insertAdjacentHTML" not in response.text
    assert "eval(" not in response.text


def test_unknown_asset_is_404(http: httpx.Client) -> None:
    for name in ("index.html", "_dashboard.py", "nope.js"):
        response = http.get(f"/orgs/acme/dashboard/{name}")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
    # A decoded %2F makes two segments: no dashboard route matches, nothing is read from disk.
    response = http.get("/orgs/acme/dashboard/..%2F_dashboard.py")
    assert response.status_code == 404
    assert "import" not in response.text


@pytest.mark.parametrize(
    "path", ["/orgs/acme/dashboard", "/orgs/acme/dashboard/app.js", "/orgs/acme/dashboard/x"]
)
def test_dashboard_refusals_are_html_without_data(base_url: str, path: str) -> None:
    before = SpyReader.calls
    member = httpx.get(base_url + path, headers={"Authorization": "Bearer member-acme"})
    assert member.status_code == 403
    assert member.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in member.headers["content-security-policy"]
    assert "<script" not in member.text
    assert 'data-status="403"' in member.text
    anonymous = httpx.get(base_url + path)
    assert anonymous.status_code == 401
    assert "log in first" in anonymous.text
    for event in ACME:
        assert event.id not in member.text + anonymous.text
    assert SpyReader.calls == before


def test_org_id_is_escaped_in_the_page() -> None:
    text = _dashboard.page('<img src=x onerror=alert(1)>"&')
    assert "<img src=x" not in text
    assert html.escape('<img src=x onerror=alert(1)>"&', quote=True) in text
    assert "{{org_id}}" not in text
    page = _dashboard.error_page(403, "<Forbidden>", "<script>x</script>")
    assert "<script>" not in page


def test_openapi_describes_activity(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/orgs/{org_id}/audit-logs/activity"]["get"]
    assert operation["operationId"] == "getAuditLogActivity"
    names = {p["name"] for p in operation["parameters"]}
    assert names == {"org_id", "since", "until", "bucket"}
    schema = spec["components"]["schemas"]["Activity"]
    assert set(schema["required"]) == {
        "since",
        "until",
        "bucket",
        "buckets",
        "alerts",
        "totals",
        "scan",
    }
    assert {"401", "403", "422"} <= set(operation["responses"])


def test_dashboard_data_is_consistent() -> None:
    """Sanity of the shared data set the browser tests rely on."""
    assert len(ACME) == 37
    assert len(newest_first(ACME)) == len({e.id for e in ACME})
    now = format_timestamp(time.time_ns())
    assert all(e.occurred_at < now for e in ACME)
