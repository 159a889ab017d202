"""HTTP retrieval API over an :class:`~audit_middleware.query.ArchiveReader` (Starlette).

``audit_log_router(reader, authorize=...)`` returns a Starlette ``Router`` to mount in an app:

* ``GET /orgs/{org_id}/audit-logs``: one page, ``{"data": [...], "next_cursor": ...}``, newest
  first. Query parameters ``actor``, ``action``, ``outcome``, ``since``, ``until``, ``limit``
  (1..1000, default 100) and ``cursor``; an empty value counts as absent.
* ``GET /orgs/{org_id}/audit-logs/export.csv`` and ``.../export.jsonl``: every matching event
  (cursors followed internally, at most :data:`MAX_EXPORT_ROWS` rows), streamed as an attachment.
* ``GET /orgs/{org_id}/audit-logs/activity``: counts per hour or day of failed logins and
  denied requests, plus the brute-force alert events, over ``since``/``until`` (default: the
  last 30 days), for the dashboard's chart (see :mod:`audit_middleware._dashboard`).
* ``GET /orgs/{org_id}/dashboard``: the Security Activity dashboard, an HTML page (plus its
  script and stylesheet under ``/orgs/{org_id}/dashboard/``) that reads the routes above from
  the browser with the browser's own credentials (cookies), so ``authorize`` must accept what
  the browser sends. Events newest first with filters, paging, CSV export and the activity
  chart. Served with a same-origin-only Content-Security-Policy; no build step, no CDN.
* ``GET /openapi.json``: an OpenAPI 3.1 description of these routes.

Access control is the application's: ``authorize(request, org_id)`` is required and is called
before anything is read. It returns ``True`` to allow; anything else (``False``) answers 403.
Raising :class:`Unauthenticated` answers 401. It may be sync or async. Errors are JSON
``{"error": {"code": ..., "message": ...}}``: 401, 403, 404 (unknown route), 422 (invalid
parameter: the reader's ``ValueError``), 500 (``archive_corrupt``). The dashboard's page and
assets answer 401/403/404 with a small HTML page instead, which holds no data.

Notes: an org id is one path segment, so org ids containing ``/`` cannot be addressed (the
server decodes ``%2F`` before routing). Exports stop after :data:`MAX_EXPORT_ROWS` rows; the
``X-Audit-Export-Limit`` header states the cap, narrow ``since``/``until`` for more. CSV cells
that a spreadsheet would treat as a formula (leading ``=``, ``+``, ``-``, ``@``, tab or CR) are
prefixed with ``'``.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from audit_middleware import _dashboard
from audit_middleware.query import MAX_LIMIT, ArchiveCorruptError, ArchiveReader

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Router
    from starlette.types import Receive, Scope, Send

__all__ = [
    "CSV_COLUMNS",
    "MAX_EXPORT_ROWS",
    "Unauthenticated",
    "audit_log_router",
    "csv_row",
]

#: The most rows one export streams.
MAX_EXPORT_ROWS: Final = 100_000
#: Column order of CSV exports.
CSV_COLUMNS: Final = (
    "occurred_at",
    "action",
    "outcome",
    "actor_id",
    "actor_email",
    "target_type",
    "target_id",
    "ip",
    "user_agent",
    "request_id",
    "id",
)
_FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
_FILTERS: Final = ("actor", "action", "outcome", "since", "until")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")

Authorize = Callable[["Request", str], "bool | Awaitable[bool]"]


class Unauthenticated(Exception):
    """Raised by ``authorize`` when the request carries no valid credentials (HTTP 401)."""


# -- CSV ---------------------------------------------------------------------------------------


def _field(value: object, *keys: str) -> str:
    for key in keys:
        if not isinstance(value, Mapping):
            return ""
        value = value.get(key)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _safe_cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def csv_row(event: Mapping[str, Any]) -> list[str]:
    """The cells of one event in :data:`CSV_COLUMNS` order, formula-injection safe."""
    cells = [
        _field(event, "occurred_at"),
        _field(event, "action"),
        _field(event, "outcome"),
        _field(event, "actor", "id"),
        _field(event, "actor", "email"),
        _field(event, "target", "type"),
        _field(event, "target", "id"),
        _field(event, "client", "ip"),
        _field(event, "client", "user_agent"),
        _field(event, "request", "id"),
        _field(event, "id"),
    ]
    return [_safe_cell(cell) for cell in cells]


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()


def _json_text(content: object) -> str:
    # ensure_ascii: lone surrogates in stored values are escaped instead of failing to encode.
    return json.dumps(content, ensure_ascii=True, separators=(",", ":"))


# -- parameters --------------------------------------------------------------------------------


def _query_args(request: Request, *, paged: bool) -> dict[str, Any]:
    """Reader keyword arguments from the query string; ValueError for a bad ``limit``."""
    params = request.query_params
    args: dict[str, Any] = {}
    for name in _FILTERS:
        value = params.get(name)
        if value:
            args[name] = value
    if paged:
        raw = params.get("limit")
        if raw:
            if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
                raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
            args["limit"] = int(raw)
        cursor = params.get("cursor")
        if cursor:
            args["cursor"] = cursor
    return args


def _activity_schema() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    nullable = {"type": ["string", "null"]}
    alert = {
        "type": "object",
        "required": ["id", "occurred_at", "target", "ip"],
        "properties": {
            "id": {"type": "string"},
            "occurred_at": time,
            "target": {
                "type": "object",
                "properties": {"type": nullable, "id": nullable},
            },
            "ip": nullable,
            "dimension": nullable,
            "failures": {"type": ["integer", "null"]},
            "window_seconds": {"type": ["number", "null"]},
            "first_failure_at": nullable,
            "last_failure_at": nullable,
        },
    }
    return {
        "type": "object",
        "required": ["since", "until", "bucket", "buckets", "alerts", "totals", "scan"],
        "properties": {
            "since": time,
            "until": time,
            "bucket": {"type": "string", "enum": list(_dashboard.BUCKETS)},
            "buckets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["start", "failed_logins", "denied"],
                    "properties": {"start": time, "failed_logins": count, "denied": count},
                },
            },
            "alerts": {"type": "array", "items": alert},
            "totals": {
                "type": "object",
                "required": ["failed_logins", "denied", "alerts"],
                "properties": {"failed_logins": count, "denied": count, "alerts": count},
            },
            "scan": {
                "type": "object",
                "required": ["max_events", "events_read", "truncated", "complete_from"],
                "properties": {
                    "max_events": count,
                    "events_read": count,
                    "truncated": {"type": "boolean"},
                    "complete_from": {"type": ["string", "null"], "format": "date-time"},
                },
            },
        },
    }


def _openapi() -> dict[str, Any]:
    org = {"name": "org_id", "in": "path", "required": True, "schema": {"type": "string"}}
    filters = [
        {"name": "actor", "in": "query", "schema": {"type": "string"}},
        {"name": "action", "in": "query", "schema": {"type": "string"}},
        {
            "name": "outcome",
            "in": "query",
            "schema": {"type": "string", "enum": ["success", "denied", "failure", "error"]},
        },
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    ]
    paging = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
        },
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]
    error = {"$ref": "#/components/responses/Error"}
    errors = {"401": error, "403": error, "422": error}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Audit log retrieval API", "version": "1"},
        "paths": {
            "/orgs/{org_id}/audit-logs": {
                "get": {
                    "operationId": "getAuditLogs",
                    "summary": "One page of an org's audit events, newest first",
                    "parameters": [org, *filters, *paging],
                    "responses": {
                        "200": {
                            "description": "A page of events",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["data", "next_cursor"],
                                        "properties": {
                                            "data": {"type": "array", "items": {"type": "object"}},
                                            "next_cursor": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/orgs/{org_id}/audit-logs/activity": {
                "get": {
                    "operationId": "getAuditLogActivity",
                    "summary": "Failed logins and denied requests over time, with brute-force "
                    "alerts",
                    "description": (
                        "Counts per bucket of failed logins (action "
                        f"`{_dashboard.FAILED_LOGIN_ACTION}`) and of other denied requests "
                        "(outcome `denied`), oldest bucket first with every bucket present, "
                        f"and the `{_dashboard.ALERT_ACTION}` events in the range. `until` "
                        "defaults to now, `since` to 30 days before `until`, `bucket` to "
                        "`hour` for spans up to 3 days, else `day`; at most "
                        f"{_dashboard.MAX_BUCKETS} buckets. Each series reads at most "
                        f"{_dashboard.MAX_ACTIVITY_EVENTS} events, newest first: when that "
                        "cap is hit `scan.truncated` is true and counts are complete only "
                        "from `scan.complete_from`."
                    ),
                    "parameters": [
                        org,
                        filters[3],
                        filters[4],
                        {
                            "name": "bucket",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(_dashboard.BUCKETS)},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "Activity counts and alerts",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Activity"}
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/orgs/{org_id}/audit-logs/export.csv": {
                "get": {
                    "operationId": "exportAuditLogsCsv",
                    "summary": f"Every matching event as CSV (at most {MAX_EXPORT_ROWS} rows)",
                    "parameters": [org, *filters],
                    "responses": {
                        "200": {
                            "description": f"CSV with columns {', '.join(CSV_COLUMNS)}",
                            "content": {"text/csv": {"schema": {"type": "string"}}},
                        },
                        **errors,
                    },
                }
            },
            "/orgs/{org_id}/audit-logs/export.jsonl": {
                "get": {
                    "operationId": "exportAuditLogsJsonl",
                    "summary": f"Every matching event as JSON lines (at most {MAX_EXPORT_ROWS})",
                    "parameters": [org, *filters],
                    "responses": {
                        "200": {
                            "description": "One event per line",
                            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                        },
                        **errors,
                    },
                }
            },
        },
        "components": {
            "schemas": {"Activity": _activity_schema()},
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "properties": {
                                            "code": {"type": "string"},
                                            "message": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
    }


# -- the router --------------------------------------------------------------------------------


def audit_log_router(reader: ArchiveReader, *, authorize: Authorize) -> Router:
    """A Starlette router serving ``reader``'s events to callers ``authorize`` admits."""
    if authorize is None:
        raise TypeError("authorize is required: a callable (request, org_id) -> bool")
    if not callable(authorize):
        raise TypeError("authorize must be a callable (request, org_id) -> bool")
    if not isinstance(reader, ArchiveReader):
        raise TypeError("reader must be an ArchiveReader")

    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route, Router

    def error(status: int, code: str, message: str) -> Response:
        body = _json_text({"error": {"code": code, "message": message}})
        return Response(body, status_code=status, media_type="application/json")

    async def refusal(request: Request, org_id: str) -> tuple[int, str, str] | None:
        """None when allowed, else ``(status, code, message)`` (nothing has been read)."""
        try:
            verdict = authorize(request, org_id)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Unauthenticated as exc:
            return 401, "unauthenticated", str(exc) or "authentication required"
        if verdict is not True:
            return 403, "forbidden", "not allowed to read this organization's audit logs"
        return None

    async def check(request: Request, org_id: str) -> Response | None:
        """None when allowed, else the JSON error response (nothing has been read)."""
        refused = await refusal(request, org_id)
        return None if refused is None else error(*refused)

    async def read(org_id: str, args: dict[str, Any]) -> Any:
        return await run_in_threadpool(reader.get_audit_logs, org_id, **args)

    def failure(exc: ValueError) -> Response:
        if isinstance(exc, ArchiveCorruptError):
            return error(500, "archive_corrupt", "the archive holds an unreadable object")
        return error(422, "invalid_parameter", str(exc))

    async def list_logs(request: Request) -> Response:
        org_id: str = request.path_params["org_id"]
        denied = await check(request, org_id)
        if denied is not None:
            return denied
        try:
            page = await read(org_id, _query_args(request, paged=True))
        except ValueError as exc:
            return failure(exc)
        body = _json_text({"data": page.events, "next_cursor": page.next_cursor})
        return Response(body, media_type="application/json")

    async def export(request: Request, kind: str) -> Response:
        org_id: str = request.path_params["org_id"]
        denied = await check(request, org_id)
        if denied is not None:
            return denied
        args = _query_args(request, paged=False)
        args["limit"] = MAX_LIMIT
        try:  # the first page before the status line, so bad parameters still answer 422
            first = await read(org_id, args)
        except ValueError as exc:
            return failure(exc)

        def encode(event: Mapping[str, Any]) -> str:
            return _csv_line(csv_row(event)) if kind == "csv" else _json_text(event) + "\n"

        async def rows() -> AsyncIterator[str]:
            if kind == "csv":
                yield _csv_line(list(CSV_COLUMNS))
            page, sent = first, 0
            while True:
                for event in page.events[: MAX_EXPORT_ROWS - sent]:
                    yield encode(event)
                sent += len(page.events)
                if page.next_cursor is None or sent >= MAX_EXPORT_ROWS:
                    return
                page = await read(org_id, {**args, "cursor": page.next_cursor})

        name = _UNSAFE_FILENAME.sub("_", org_id)[:100] or "org"
        media = "text/csv; charset=utf-8" if kind == "csv" else "application/x-ndjson"
        headers = {
            "Content-Disposition": f'attachment; filename="audit-logs-{name}.{kind}"',
            "X-Audit-Export-Limit": str(MAX_EXPORT_ROWS),
            "Cache-Control": "no-store",
        }
        return StreamingResponse(rows(), media_type=media, headers=headers)

    async def export_csv(request: Request) -> Response:
        return await export(request, "csv")

    async def export_jsonl(request: Request) -> Response:
        return await export(request, "jsonl")

    async def activity(request: Request) -> Response:
        org_id: str = request.path_params["org_id"]
        denied = await check(request, org_id)
        if denied is not None:
            return denied
        params = request.query_params

        def compute() -> dict[str, Any]:
            return _dashboard.activity(
                reader,
                org_id,
                since=params.get("since") or None,
                until=params.get("until") or None,
                bucket=params.get("bucket") or None,
            )

        try:
            body = await run_in_threadpool(compute)
        except ValueError as exc:
            return failure(exc)
        return Response(_json_text(body), media_type="application/json")

    def html(status: int, content: str) -> Response:
        return Response(
            content,
            status_code=status,
            media_type="text/html; charset=utf-8",
            headers=_dashboard.page_headers(),
        )

    async def html_check(request: Request, org_id: str) -> Response | None:
        refused = await refusal(request, org_id)
        if refused is None:
            return None
        status, _code, message = refused
        title = "Unauthorized" if status == 401 else "Forbidden"
        return html(status, _dashboard.error_page(status, title, message))

    async def dashboard(request: Request) -> Response:
        org_id: str = request.path_params["org_id"]
        denied = await html_check(request, org_id)
        if denied is not None:
            return denied
        return html(200, _dashboard.page(org_id))

    async def dashboard_asset(request: Request) -> Response:
        org_id: str = request.path_params["org_id"]
        denied = await html_check(request, org_id)
        if denied is not None:
            return denied
        found = _dashboard.asset(request.path_params["asset"])
        if found is None:
            return html(404, _dashboard.error_page(404, "Not Found", "no such dashboard asset"))
        content, media = found
        return Response(content, media_type=media, headers=_dashboard.page_headers())

    spec = _json_text(_openapi())

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await error(404, "not_found", "no such route")(scope, receive, send)

    return Router(
        routes=[
            Route("/orgs/{org_id}/audit-logs", list_logs, methods=["GET"]),
            Route("/orgs/{org_id}/audit-logs/export.csv", export_csv, methods=["GET"]),
            Route("/orgs/{org_id}/audit-logs/export.jsonl", export_jsonl, methods=["GET"]),
            Route("/orgs/{org_id}/audit-logs/activity", activity, methods=["GET"]),
            Route("/orgs/{org_id}/dashboard", dashboard, methods=["GET"]),
            Route("/orgs/{org_id}/dashboard/{asset}", dashboard_asset, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        default=not_found,
    )
