"""``audit-log query``: read one org's events from the archive (no server).

``audit-log query --archive URL --org ORG [--actor A] [--action A] [--outcome O] [--since T]
[--until T] [--limit N] [--format table|json|csv] [--engine python|duckdb]`` prints at most
``N`` (default 100) events, newest first, following the reader's cursors. ``--engine python``
(:class:`~audit_middleware.query.ArchiveReader`, the default: as fast or faster on the
benchmark's questions, see docs/query.md, and no duckdb import) and ``--engine duckdb``
(:class:`~audit_middleware.duckdb_engine.DuckDBEngine`) return the same events.
``--archive`` defaults to
``$AUDIT_LOG_ARCHIVE_URL``. ``json`` is one JSON array; ``csv`` has the retrieval API's columns
(formula-injection safe); ``table`` escapes control characters so stored values cannot drive
the terminal. A bad argument exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["add_arguments", "register", "run"]

ARCHIVE_URL_ENV: Final = "AUDIT_LOG_ARCHIVE_URL"
MAX_EVENTS: Final = 100_000
HELP: Final = "print one org's audit events from the archive, newest first"
_TABLE_COLUMNS: Final = ("occurred_at", "action", "outcome", "actor", "target", "ip")
ENGINES: Final = ("python", "duckdb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--archive",
        metavar="URL",
        help=f"s3://bucket/prefix or a directory (default: ${ARCHIVE_URL_ENV})",
    )
    parser.add_argument("--org", required=True, help="the organization id")
    parser.add_argument("--actor", help="actor id or email")
    parser.add_argument("--action", help="exact action, or a prefix ending in .*")
    parser.add_argument("--outcome", choices=("success", "denied", "failure", "error"))
    parser.add_argument("--since", metavar="TIME", help="RFC 3339, inclusive")
    parser.add_argument("--until", metavar="TIME", help="RFC 3339, exclusive")
    parser.add_argument(
        "--limit", metavar="N", type=int, default=100, help="at most N events (default 100)"
    )
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="python",
        help="query engine (default: python); both return the same events",
    )


def register(subparsers: Any) -> None:
    """Add ``query`` to the ``audit-log`` sub-command parsers."""
    sub = subparsers.add_parser("query", help=HELP, description=HELP)
    add_arguments(sub)
    sub.set_defaults(run=run)


def _events(args: argparse.Namespace) -> list[dict[str, Any]]:
    from audit_middleware.query import MAX_LIMIT, ArchiveReader

    url = args.archive or os.environ.get(ARCHIVE_URL_ENV, "").strip()
    if not url:
        raise ValueError(f"no archive: pass --archive or set {ARCHIVE_URL_ENV}")
    total: int = args.limit
    if not 1 <= total <= MAX_EVENTS:
        raise ValueError(f"--limit must be from 1 to {MAX_EVENTS}, got {total}")
    engine = getattr(args, "engine", "python")
    reader: ArchiveReader
    if engine == "duckdb":
        from audit_middleware.duckdb_engine import DuckDBEngine

        reader = DuckDBEngine(url)
    else:
        reader = ArchiveReader(url)
    filters = {
        name: getattr(args, name)
        for name in ("actor", "action", "outcome", "since", "until")
        if getattr(args, name) is not None
    }
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(events) < total:
        size = min(total - len(events), MAX_LIMIT)
        page = reader.get_audit_logs(args.org, limit=size, cursor=cursor, **filters)
        events.extend(page.events)
        cursor = page.next_cursor
        if cursor is None:
            break
    return events


def _printable(value: object) -> str:
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _get(event: Mapping[str, Any], part: str, key: str) -> object:
    value = event.get(part)
    return value.get(key) if isinstance(value, Mapping) else None


def _cell(event: Mapping[str, Any], column: str) -> str:
    value: object
    if column == "actor":
        value = _get(event, "actor", "email") or _get(event, "actor", "id")
    elif column == "target":
        target = event.get("target")
        value = None
        if isinstance(target, Mapping):
            value = f"{target.get('type')}:{target.get('id')}"
    elif column == "ip":
        value = _get(event, "client", "ip")
    else:
        value = event.get(column)
    return _printable(value)


def _table(events: list[dict[str, Any]]) -> list[str]:
    rows = [list(_TABLE_COLUMNS)] + [[_cell(e, c) for c in _TABLE_COLUMNS] for e in events]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return [line.rstrip() for line in lines]


def run(args: argparse.Namespace) -> int:
    from audit_middleware.retrieval import CSV_COLUMNS, csv_row

    events = _events(args)
    if args.format == "json":
        print(json.dumps(events, ensure_ascii=True, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_row(event) for event in events)
    else:
        for line in _table(events):
            print(line)
        print(f"({len(events)} event{'s' if len(events) != 1 else ''})")
    return 0
