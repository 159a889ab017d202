"""The Security Activity dashboard in real headless Chromium (Debian's, driven by Playwright).

The router runs under uvicorn on loopback over a real archive written by ``ArchiveExporter``
(the data set of ``tests/test_dashboard_api.py``). The browser authenticates with a ``session``
cookie, as a web app's users do; ``authorize`` admits only the org's admins. Each test waits
for conditions the page exposes (``data-events-loaded`` counters on ``<body>``), never for a
time. Screenshots of each major state are saved in ``tests/artifacts/``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from audit_middleware import AuditEvent
from audit_middleware.retrieval import CSV_COLUMNS, audit_log_router
from tests.browser import chromium, screenshot
from tests.conftest import serve
from tests.test_dashboard_api import (
    ACME,
    ALERT,
    BOB,
    DAY,
    DENIED,
    FAILED_BURST,
    FAILED_LOGINS,
    FAILED_OTHER,
    GLOBEX,
    HOSTILE,
    HOSTILE_ACTOR,
    HOSTILE_EMAIL,
    HOSTILE_TARGET,
    HOSTILE_UA,
    SECRET,
    VICTIM,
    authorize,
    build_archive,
)
from tests.test_query import newest_first

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Response

PAGE_SIZE = 25  # the dashboard's smallest page size; ACME has 37 events, so two pages


def day(offset: int) -> str:
    return (DAY + timedelta(days=offset)).strftime("%Y-%m-%d")


@dataclass
class Session:
    """A browser tab with what it observed."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions, CSP violations
    responses: list[Response] = field(default_factory=list)

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.errors.append(message.text)

    def on_response(self, response: Response) -> None:
        self.responses.append(response)

    def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))

    def assert_clean(self) -> None:
        assert self.dialogs == [], "a hostile value was executed"
        assert self.errors == []


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reader = build_archive(tmp_path_factory.mktemp("dashboard-browser") / "archive")
    with serve(audit_log_router(reader, authorize=authorize)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def tab(browser: Browser, base_url: str) -> Iterator[Callable[[str | None], Session]]:
    """Open a tab whose context carries the ``session`` cookie ``token`` (None: none)."""
    contexts: list[Any] = []

    def open_tab(token: str | None) -> Session:
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        contexts.append(context)
        if token is not None:
            context.add_cookies([{"name": "session", "value": token, "url": base_url}])
        page = context.new_page()
        page.set_default_timeout(20_000)
        session = Session(page)
        page.on("dialog", session.on_dialog)
        page.on("console", session.on_console)
        page.on("pageerror", session.on_error)
        page.on("response", session.on_response)
        return session

    yield open_tab
    for context in contexts:
        context.close()


# -- page helpers ----------------------------------------------------------------------------


def loads(page: Page) -> str:
    return str(page.evaluate("document.body.dataset.eventsLoaded || '0'"))


def wait_ready(page: Page, events_before: str = "0", activity_before: str = "0") -> None:
    """Wait until the event table and the chart finished loading after the given counters."""
    page.wait_for_function(
        """([events, activity]) => {
            const d = document.body.dataset;
            return d.events === "ready" && d.activity === "ready"
                && d.eventsLoaded !== events && d.activityLoaded !== activity;
        }""",
        arg=[events_before, activity_before],
    )


def open_dashboard(session: Session, base_url: str, query: str = "") -> Response | None:
    response = session.page.goto(f"{base_url}/orgs/acme/dashboard{query}")
    wait_ready(session.page)
    return response


def apply(page: Page, click: str = "#apply") -> None:
    """Click (Apply by default) and wait for the reload it causes."""
    before = (
        page.evaluate("document.body.dataset.eventsLoaded"),
        page.evaluate("document.body.dataset.activityLoaded"),
    )
    page.click(click)
    wait_ready(page, *before)


def turn(page: Page, button: str) -> None:
    """Click a pager button and wait for the event table to reload."""
    before = loads(page)
    page.click(button)
    page.wait_for_function(
        "(n) => document.body.dataset.events === 'ready'"
        " && document.body.dataset.eventsLoaded !== n",
        arg=before,
    )


def row_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#rows tr[data-event-id]", "rows => rows.map(row => row.dataset.eventId)"
    )
    return ids


def ids_of(events: Sequence[AuditEvent]) -> list[str]:
    return newest_first(events)


# -- tests -----------------------------------------------------------------------------------


def test_page_loads_with_rows_newest_first(
    tab: Callable[[str | None], Session], base_url: str
) -> None:
    session = tab("admin-acme")
    page = session.page
    response = open_dashboard(session, base_url, f"?limit={PAGE_SIZE}")
    assert response is not None
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert page.title() == "Security activity: acme"
    headers = page.eval_on_selector_all("#log thead th", "cells => cells.map(c => c.textContent)")
    assert headers == ["Time (UTC)", "Actor", "Action", "Target", "Outcome", "IP", "User-Agent"]
    assert row_ids(page) == ids_of(ACME)[:PAGE_SIZE]
    newest = max(ACME, key=lambda e: (e.occurred_at, e.id))
    first = page.locator("#rows tr").first
    assert first.locator("td.time").get_attribute("title") == newest.occurred_at
    assert first.locator("td.time").inner_text().endswith("Z")
    assert first.locator("td.action").inner_text() == newest.action
    assert page.inner_text("#page-number") == "Page 1"
    assert page.is_disabled("#prev")
    assert page.is_enabled("#next")
    assert SECRET not in page.content()  # nothing of another org
    screenshot(page, "dashboard-loaded")
    session.assert_clean()


FILTER_CASES: list[tuple[str, dict[str, str], list[AuditEvent]]] = [
    ("actor-id", {"#f-actor": "u2"}, [FAILED_OTHER, *BOB]),
    ("actor-email", {"#f-actor": "bob@acme.test"}, [FAILED_OTHER, *BOB]),
    ("action-prefix", {"#f-action": "user.login.*"}, FAILED_LOGINS),
    ("action-exact", {"#f-action": "doc.shared"}, [HOSTILE]),
    ("outcome", {"#f-outcome": "denied"}, [*FAILED_BURST, *DENIED]),
    ("date-range", {"#f-from": day(1), "#f-to": day(1)}, [*FAILED_BURST, *DENIED[:2], ALERT]),
    ("combined", {"#f-outcome": "denied", "#f-from": day(2)}, [DENIED[2]]),
    ("nothing", {"#f-actor": "nobody"}, []),
]


@pytest.mark.parametrize(
    ("name", "fields", "expected"), FILTER_CASES, ids=[case[0] for case in FILTER_CASES]
)
def test_each_filter_changes_the_rows(
    tab: Callable[[str | None], Session],
    base_url: str,
    name: str,
    fields: dict[str, str],
    expected: list[AuditEvent],
) -> None:
    session = tab("admin-acme")
    page = session.page
    open_dashboard(session, base_url, "?limit=100")
    assert row_ids(page) == ids_of(ACME)
    for selector, value in fields.items():
        if selector == "#f-outcome":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)
    apply(page)
    assert row_ids(page) == ids_of(expected)
    if not expected:
        assert page.inner_text("#rows") == "No events match these filters."
    assert page.inner_text("#status").startswith(f"{len(expected)} event")
    # The filters are kept in the address bar, so a reload shows the same rows.
    page.reload()
    wait_ready(page)
    assert row_ids(page) == ids_of(expected)
    screenshot(page, f"dashboard-filter-{name}")
    # Clear restores every event.
    apply(page, "#clear")
    assert row_ids(page) == ids_of(ACME)[:50]
    session.assert_clean()


def test_paging_next_and_previous(tab: Callable[[str | None], Session], base_url: str) -> None:
    session = tab("admin-acme")
    page = session.page
    open_dashboard(session, base_url)
    page.select_option("#f-limit", str(PAGE_SIZE))
    apply(page)
    everything = ids_of(ACME)
    assert row_ids(page) == everything[:PAGE_SIZE]
    turn(page, "#next")
    assert row_ids(page) == everything[PAGE_SIZE:]
    assert page.inner_text("#page-number") == "Page 2"
    assert page.is_disabled("#next")
    assert page.is_enabled("#prev")
    screenshot(page, "dashboard-page-2")
    turn(page, "#prev")
    assert row_ids(page) == everything[:PAGE_SIZE]
    assert page.inner_text("#page-number") == "Page 1"
    assert page.is_disabled("#prev")
    # Paging within a filter: 3 per page is not offered, so page a filtered set of 25+.
    page.fill("#f-action", "doc.viewed")
    apply(page)
    views = ids_of([e for e in ACME if e.action == "doc.viewed"])
    assert len(views) == 24
    assert row_ids(page) == views
    assert page.is_disabled("#next")
    session.assert_clean()


def test_csv_download_uses_the_filters(tab: Callable[[str | None], Session], base_url: str) -> None:
    session = tab("admin-acme")
    page = session.page
    open_dashboard(session, base_url)
    page.select_option("#f-outcome", "denied")
    apply(page)
    with page.expect_download() as info:
        page.click("#export-csv")
    download = info.value
    assert download.suggested_filename == "audit-logs-acme.csv"
    path = download.path()
    assert path is not None
    rows = list(csv.reader(io.StringIO(path.read_text("utf-8"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["id"] for r in records] == ids_of([*FAILED_BURST, *DENIED])
    assert {r["outcome"] for r in records} == {"denied"}
    screenshot(page, "dashboard-csv-export")

    # Without filters the export holds every event of the org, and only of the org.
    apply(page, "#clear")
    with page.expect_download() as info:
        page.click("#export-csv")
    everything = info.value.path()
    assert everything is not None
    text = everything.read_text("utf-8")
    exported = [row[CSV_COLUMNS.index("id")] for row in list(csv.reader(io.StringIO(text)))[1:]]
    assert exported == ids_of(ACME)
    assert SECRET not in text
    session.assert_clean()


def test_chart_shows_failures_denials_and_the_alert(
    tab: Callable[[str | None], Session], base_url: str
) -> None:
    session = tab("admin-acme")
    page = session.page
    open_dashboard(session, base_url)
    chart = page.locator("#chart svg.activity-chart")
    assert chart.count() == 1
    assert chart.is_visible()
    counts = "bars => bars.map(b => Number(b.dataset.count))"
    failed = page.eval_on_selector_all("#chart .bar-failed", counts)
    denied = page.eval_on_selector_all("#chart .bar-denied", counts)
    assert sorted(failed) == [1, 5]  # day buckets over the last 30 days
    assert sorted(denied) == [1, 2]
    markers = page.locator("#chart .alert-marker")
    assert markers.count() == 1
    assert markers.first.get_attribute("data-alert-id") == ALERT.id
    assert "Brute-force alert" in (markers.first.locator("title").text_content() or "")
    summary = page.inner_text("#activity-summary")
    assert summary.startswith("6 failed logins, 3 denied requests and 1 brute-force alerts")
    assert page.locator("#alerts").is_visible()
    assert page.inner_text("#alerts tbody .alert-key") == VICTIM.lower()
    assert page.locator("#alerts tbody svg").count() == 0  # the hostile account name is text
    screenshot(page, "dashboard-chart-30-days")

    # One day selected: hourly buckets, the burst in the 09:00 bar, the alert right after it.
    page.fill("#f-from", day(1))
    page.fill("#f-to", day(1))
    apply(page)
    bars = page.eval_on_selector_all(
        "#chart .bar-failed", "bars => bars.map(b => [b.dataset.start, Number(b.dataset.count)])"
    )
    assert bars == [[f"{day(1)}T09:00:00Z", 5]]
    denied_bars = page.eval_on_selector_all(
        "#chart .bar-denied", "bars => bars.map(b => [b.dataset.start, Number(b.dataset.count)])"
    )
    assert denied_bars == [[f"{day(1)}T14:00:00Z", 2]]
    marker_x = float(page.get_attribute("#chart .alert-marker line", "x1") or "nan")
    bar_x = float(page.get_attribute("#chart .bar-failed", "x") or "nan")
    slot = float(page.get_attribute("#chart .bar-failed", "width") or "nan") / 0.4
    bucket_start = bar_x - 0.1 * slot
    assert bucket_start < marker_x < bucket_start + slot  # 09:04:01 is in the 09:00 bucket
    assert page.inner_text("#activity-warning") == ""
    screenshot(page, "dashboard-chart-one-day")
    session.assert_clean()


def test_hostile_strings_are_shown_as_text(
    tab: Callable[[str | None], Session], base_url: str
) -> None:
    session = tab("admin-acme")
    page = session.page
    open_dashboard(session, base_url, "?action=doc.shared")
    assert row_ids(page) == [HOSTILE.id]
    row = page.locator(f'#rows tr[data-event-id="{HOSTILE.id}"]')
    assert row.locator("td.user-agent").text_content() == HOSTILE_UA
    assert row.locator(".actor-id").text_content() == HOSTILE_ACTOR
    assert row.locator(".sub").text_content() == HOSTILE_EMAIL
    assert row.locator(".target-id").text_content() == HOSTILE_TARGET
    assert page.locator("#rows img, #rows script, #rows b, #rows svg").count() == 0
    assert page.evaluate("window.__pwned === undefined")
    screenshot(page, "dashboard-hostile-strings")
    session.assert_clean()


def test_csp_blocks_injected_inline_script(
    tab: Callable[[str | None], Session], base_url: str
) -> None:
    """Defence in depth: even markup that slipped into the DOM could not run a script."""
    session = tab("admin-acme")
    page = session.page
    open_dashboard(session, base_url)
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text) as message:
        page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.__inline = 1";
                document.body.append(script);
            }"""
        )
    assert "script-src 'self'" in message.value.text
    assert page.evaluate("window.__inline === undefined")
    assert session.errors == [message.value.text]


def test_non_admin_sees_403_and_no_data(
    tab: Callable[[str | None], Session], base_url: str
) -> None:
    session = tab("member-acme")
    page = session.page
    response = page.goto(f"{base_url}/orgs/acme/dashboard")
    assert response is not None
    assert response.status == 403
    assert page.inner_text("h1") == "403 Forbidden"
    assert page.locator("#rows").count() == 0
    assert page.locator("script").count() == 0
    screenshot(page, "dashboard-403-member")
    # The member's browser asks the data routes directly (with its cookie): all refused.
    bodies: list[str] = []
    for path in (
        "audit-logs?limit=100",
        "audit-logs/activity",
        "audit-logs/export.csv",
        "dashboard/app.js",
    ):
        direct = page.request.get(f"{base_url}/orgs/acme/{path}")
        assert direct.status == 403, path
        assert "forbidden" in direct.text().lower()
        bodies.append(direct.text())
    # Neither the DOM nor any response the browser received holds event data.
    bodies.append(page.content())
    for seen in session.responses:
        assert seen.status in (403, 404), seen.url  # 404: the browser's own favicon request
        bodies.append(seen.text())
    everything = "\n".join(bodies)
    for event in [*ACME, *GLOBEX]:
        assert event.id not in everything
    for secret in ("alice@acme.test", "bob@acme.test", SECRET, HOSTILE_UA, "user.login.failed"):
        assert secret not in everything
    session.assert_clean()


def test_anonymous_sees_401(tab: Callable[[str | None], Session], base_url: str) -> None:
    session = tab(None)
    page = session.page
    response = page.goto(f"{base_url}/orgs/acme/dashboard")
    assert response is not None
    assert response.status == 401
    assert page.inner_text("h1") == "401 Unauthorized"
    assert page.locator("#rows").count() == 0
    for event in ACME:
        assert event.id not in page.content()
    screenshot(page, "dashboard-401-anonymous")


def test_works_mounted_under_a_prefix(browser: Browser, base_url: str, tmp_path: Path) -> None:
    """Mounted in an app under ``/admin/audit``: assets, data, chart and CSV all resolve."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    reader = build_archive(tmp_path / "archive")
    app = Starlette(routes=[Mount("/admin/audit", audit_log_router(reader, authorize=authorize))])
    context = browser.new_context(accept_downloads=True)
    try:
        with serve(app) as url:
            context.add_cookies([{"name": "session", "value": "admin-acme", "url": url}])
            page = context.new_page()
            page.set_default_timeout(20_000)
            seen: list[str] = []
            page.on("request", lambda request: seen.append(request.url))
            page.goto(f"{url}/admin/audit/orgs/acme/dashboard?limit=25")
            wait_ready(page)
            assert row_ids(page) == ids_of(ACME)[:PAGE_SIZE]
            assert page.locator("#chart .alert-marker").count() == 1
            href = page.get_attribute("#export-csv", "href") or ""
            assert href.startswith(f"{url}/admin/audit/orgs/acme/audit-logs/export.csv")
            assert all(u.startswith(f"{url}/admin/audit/orgs/acme/") for u in seen), seen
            screenshot(page, "dashboard-mounted")
    finally:
        context.close()
