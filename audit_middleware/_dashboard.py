"""The Security Activity dashboard served by :func:`audit_middleware.retrieval.audit_log_router`.

Two parts:

* Static assets (``audit_middleware/dashboard/``: ``index.html``, ``app.js``, ``style.css``),
  package data read with :mod:`importlib.resources`. Vanilla JavaScript module and CSS, no
  build step, nothing fetched from a CDN. The page is rendered with only the (HTML-escaped) org
  id substituted; every event value is inserted by the script as a text node, never as markup.
  :data:`CONTENT_SECURITY_POLICY` allows scripts, styles and requests to the same origin only.
* :func:`activity`: counts over time of failed logins and denied requests plus the brute-force
  alert events of one org, computed from the reader's public API
  (:meth:`~audit_middleware.query.ArchiveReader.get_audit_logs`, following cursors).

Series (each event counts in at most one):

* ``failed_logins``: events whose action is ``user.login.failed`` (outcome ``failure`` or
  ``denied``; any outcome is counted);
* ``denied``: other events with outcome ``denied`` (401/403 responses);
* ``alerts``: ``security.brute_force.suspected`` events, listed individually with their time.

Each series reads at most :data:`MAX_ACTIVITY_EVENTS` events, newest first. When a series hits
that cap, the response says so (``scan.truncated``) and ``scan.complete_from`` gives the time
from which every count is complete; narrow ``since``/``until`` to see older activity.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, Final

from audit_middleware.query import MAX_LIMIT, ArchiveReader

__all__ = [
    "ALERT_ACTION",
    "ASSETS",
    "BUCKETS",
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_RANGE",
    "FAILED_LOGIN_ACTION",
    "MAX_ACTIVITY_EVENTS",
    "MAX_BUCKETS",
    "activity",
    "asset",
    "error_page",
    "page",
    "page_headers",
]

#: The action counted as a failed login.
FAILED_LOGIN_ACTION: Final = "user.login.failed"
#: The action of brute-force alert events (``Builder.alert_event``).
ALERT_ACTION: Final = "security.brute_force.suspected"
#: The most events :func:`activity` reads per series.
MAX_ACTIVITY_EVENTS: Final = 20_000
#: The most buckets one activity response holds.
MAX_BUCKETS: Final = 2_000
#: Bucket sizes.
BUCKETS: Final[Mapping[str, timedelta]] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
#: The range :func:`activity` covers when ``since`` is not given.
DEFAULT_RANGE: Final = timedelta(days=30)
#: Served assets and their media types.
ASSETS: Final[Mapping[str, str]] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: The Content-Security-Policy of every dashboard response: same origin only, no inline code.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HOURLY_SPAN: Final = timedelta(days=3)  # default bucket: hour up to this span, else day
_ALERT_FIELDS: Final = (
    "dimension",
    "failures",
    "window_seconds",
    "first_failure_at",
    "last_failure_at",
)


# -- assets and pages ----------------------------------------------------------------------


def _read_text(name: str) -> str:
    return (resources.files("audit_middleware") / "dashboard" / name).read_text("utf-8")


def asset(name: str) -> tuple[bytes, str] | None:
    """The bytes and media type of a static asset, or None for an unknown name."""
    media = ASSETS.get(name)
    if media is None:
        return None
    return _read_text(name).encode("utf-8"), media


def page(org_id: str) -> str:
    """The dashboard HTML for ``org_id`` (escaped; the page holds no event data)."""
    return _read_text("index.html").replace("{{org_id}}", html.escape(org_id, quote=True))


def error_page(status: int, title: str, message: str) -> str:
    """A minimal HTML error page (no script, no data)."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{status} {html.escape(title)}</title></head>"
        f'<body><main id="error" data-status="{status}"><h1>{status} {html.escape(title)}</h1>'
        f"<p>{html.escape(message)}</p></main></body></html>\n"
    )


def page_headers() -> dict[str, str]:
    """Security headers for every dashboard response."""
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


# -- activity ------------------------------------------------------------------------------


def _parse_time(name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an RFC 3339 timestamp, got {value[:64]!r}") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{name} must carry a timezone (naive timestamps are ambiguous)")
    return parsed.astimezone(UTC)


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _floor(moment: datetime, bucket: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    occurred = event.get("occurred_at")
    if not isinstance(occurred, str):
        return None
    try:
        return _parse_time("occurred_at", occurred)
    except ValueError:
        return None


class _Scan:
    """Reads one filtered series newest first, at most ``cap`` events."""

    def __init__(self, reader: ArchiveReader, org_id: str, cap: int, **query: str) -> None:
        self.reader, self.org_id, self.cap, self.query = reader, org_id, cap, query
        self.read = 0
        self.truncated = False
        self.oldest: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            limit = min(MAX_LIMIT, self.cap - self.read)
            args: dict[str, Any] = {**self.query, "limit": limit}
            if cursor is not None:
                args["cursor"] = cursor
            found = self.reader.get_audit_logs(self.org_id, **args)
            for event in found.events:
                self.read += 1
                occurred = event.get("occurred_at")
                if isinstance(occurred, str):
                    self.oldest = occurred
                yield event
            cursor = found.next_cursor
            if cursor is None:
                return
            if self.read >= self.cap:
                self.truncated = True
                return


def _alert(event: Mapping[str, Any]) -> dict[str, Any]:
    metadata = event.get("metadata")
    meta = metadata if isinstance(metadata, Mapping) else {}
    target = event.get("target")
    client = event.get("client")
    out: dict[str, Any] = {
        "id": event.get("id"),
        "occurred_at": event.get("occurred_at"),
        "target": {
            "type": target.get("type") if isinstance(target, Mapping) else None,
            "id": target.get("id") if isinstance(target, Mapping) else None,
        },
        "ip": client.get("ip") if isinstance(client, Mapping) else None,
    }
    for name in _ALERT_FIELDS:
        value = meta.get(name)
        out[name] = value if isinstance(value, str | int | float) else None
    return out


def activity(
    reader: ArchiveReader,
    org_id: str,
    *,
    since: str | None = None,
    until: str | None = None,
    bucket: str | None = None,
    now: datetime | None = None,
    max_events: int | None = None,
) -> dict[str, Any]:
    """Failed logins and denied requests per bucket, and the brute-force alerts, of one org.

    ``until`` defaults to now, ``since`` to :data:`DEFAULT_RANGE` before ``until``; ``bucket``
    (``hour`` or ``day``) to ``hour`` for spans up to three days. Invalid values raise
    ``ValueError``. The JSON-ready result::

        {"since", "until", "bucket",
         "buckets": [{"start", "failed_logins", "denied"}, ...],   # oldest first, every bucket
         "alerts": [{"id", "occurred_at", "target": {"type", "id"}, "ip", "dimension",
                     "failures", "window_seconds", "first_failure_at", "last_failure_at"}],
         "totals": {"failed_logins", "denied", "alerts"},
         "scan": {"max_events", "events_read", "truncated", "complete_from"}}
    """
    cap = MAX_ACTIVITY_EVENTS if max_events is None else max_events
    if cap < 1:
        raise ValueError("max_events must be at least 1")
    until_at = _parse_time("until", until) if until else (now or datetime.now(UTC))
    since_at = _parse_time("since", since) if since else until_at - DEFAULT_RANGE
    if since_at > until_at:
        raise ValueError("since must not be after until")
    if bucket is None or bucket == "":
        bucket = "hour" if until_at - since_at <= _HOURLY_SPAN else "day"
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket[:32]!r}")
    step = BUCKETS[bucket]
    first = _floor(since_at, bucket)
    count = max(1, -(-(until_at - first) // step))
    if count > MAX_BUCKETS:
        raise ValueError(
            f"the range holds {count} {bucket} buckets, more than {MAX_BUCKETS}: "
            "narrow since/until or use bucket=day"
        )
    failed = [0] * count
    denied = [0] * count
    window = {"since": since_at.isoformat(), "until": until_at.isoformat()}

    def index(event: Mapping[str, Any]) -> int | None:
        moment = _event_time(event)
        if moment is None:
            return None
        i = (moment - first) // step
        return i if 0 <= i < count else None

    scans: list[_Scan] = []

    def scan(**query: str) -> _Scan:
        made = _Scan(reader, org_id, cap, **window, **query)
        scans.append(made)
        return made

    for event in scan(action=FAILED_LOGIN_ACTION):
        i = index(event)
        if i is not None:
            failed[i] += 1
    for event in scan(outcome="denied"):
        if event.get("action") == FAILED_LOGIN_ACTION:
            continue
        i = index(event)
        if i is not None:
            denied[i] += 1
    alerts = [_alert(event) for event in scan(action=ALERT_ACTION)]
    alerts.reverse()  # oldest first, like the buckets

    truncated = [s for s in scans if s.truncated]
    complete_from = max((s.oldest for s in truncated if s.oldest), default=None)
    return {
        "since": _text(since_at),
        "until": _text(until_at),
        "bucket": bucket,
        "buckets": [
            {"start": _text(first + i * step), "failed_logins": failed[i], "denied": denied[i]}
            for i in range(count)
        ],
        "alerts": alerts,
        "totals": {"failed_logins": sum(failed), "denied": sum(denied), "alerts": len(alerts)},
        "scan": {
            "max_events": cap,
            "events_read": sum(s.read for s in scans),
            "truncated": bool(truncated),
            "complete_from": complete_from,
        },
    }
