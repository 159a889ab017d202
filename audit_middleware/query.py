"""Read audit events back from the archive: per-tenant queries and operators' cross-org search.

The archive (``exporters/archive.py``) stores objects as
``<prefix>/org_id=<org>/dt=<YYYY-MM-DD>/<writer>-<seq>.jsonl.gz`` (or ``.parquet``), in a local
directory or an S3 bucket. :class:`ArchiveReader` lists and reads those objects through
``pyarrow.fs`` (``LocalFileSystem`` or ``S3FileSystem``; DuckDB cannot reach S3 offline) and
returns event dicts as the JSON Schema describes them, newest first, with keyset pagination.

What it defends against
-----------------------
* **Cross-tenant reads.** :meth:`ArchiveReader.get_audit_logs` lists and opens only the
  ``org_id=<encoded org>`` directory of the requested org, encoded exactly as the writer does
  (``exporters.archive._partition_value``: percent-encoding, so ``a/b``, ``..``, ``%2F`` or
  unicode cannot name another directory). Every JSON-lines row is then checked again
  (``row["org_id"] == org_id``), so a misplaced object cannot leak. Events without an org
  (``_global``) are never visible to an org, only to :meth:`ArchiveReader.search`.
* **Injection.** Filter values are compared as Python values. Nothing is interpolated into SQL,
  glob patterns or paths. ``'``, ``--``, ``*``, ``../``, 10 kB strings and unicode simply match
  nothing (``*`` has a meaning only as the documented ``.*`` suffix of ``action``).
* **Cursor confusion.** A cursor carries a hash of its query (kind, org and every filter); a
  cursor from another query or org raises ``ValueError("cursor does not match this query")``.
  Cursors are not signed: a caller who forges one can only move the starting point of their
  own query, because the org is always taken from the arguments, never from the cursor.

What it does not defend against
-------------------------------
* Access control. Whoever can call :meth:`~ArchiveReader.search` or holds credentials for the
  bucket reads every org. Deciding which org a caller may pass is the application's job.
* Tampering with stored objects (Object Lock and the bucket settings cover that) and
  denial of service by huge partitions (a query reads whole day-partitions into memory).
* Parquet objects carry ``org_id`` only in their path. The writer truncates encoded org ids to
  200 characters, so two orgs whose encoded ids share those 200 characters share a directory.
  Their JSON-lines rows are still told apart by the row check, but their Parquet rows cannot
  be: :meth:`~ArchiveReader.get_audit_logs` raises ``ValueError`` when it meets a Parquet
  object in such a possibly-truncated partition, and :meth:`~ArchiveReader.search` skips such
  objects with a warning, rather than attributing rows to the wrong org. Likewise a Parquet
  object copied into another org's directory (or a symlinked directory) is attributed to that
  directory's org; only JSON-lines rows can be checked against their own ``org_id``.
* ``search(org_id="_global")`` means the org literally named ``_global``; events without an org
  are reached only by ``search()`` without ``org_id``.

Input rules
-----------
* ``org_id`` must be a non-empty ``str`` without NUL and encodable as UTF-8; otherwise
  ``ValueError``. Other filter values must be ``str`` (``TypeError`` otherwise); a NUL or any
  other odd character in them is inert (it matches nothing).
* ``since``/``until`` are aware datetimes or RFC 3339 strings with an offset; naive values raise
  ``ValueError``. ``since`` is inclusive, ``until`` exclusive. ``limit`` is 1..1000.
* ``action`` matches exactly, or as a prefix when it ends with ``.*``: ``user.login.*`` matches
  ``user.login.failed`` but not ``user.login``.

Order, pagination and duplicates
--------------------------------
Events come newest first by ``(occurred_at, id)`` descending. ``occurred_at`` is compared as
its fixed-width RFC 3339 text (microseconds, ``Z``), which sorts chronologically. The cursor is
URL-safe base64 (no padding) of JSON holding the last returned ``(occurred_at, id)``; the next
page holds only strictly older keys, so events appended meanwhile with newer timestamps never
shift later pages. (An object uploaded late whose events are *older* than the cursor appears on
later pages; one whose events fall between pages already returned is not revisited.) Events
are de-duplicated by ``id`` (at-least-once delivery); the first copy read wins, and the files of
a partition are read in path order.

Performance
-----------
Correctness first. A query lists the org's ``dt=`` directories (``search`` without an org lists
every org's), keeps the days within ``[since, until)`` and before the cursor (string compare,
as in Athena), and reads them newest day first, stopping once a day completes with more than
``limit`` matches. That early stop relies on the writer's invariant that an object in
``dt=D`` holds only events whose ``occurred_at`` falls on day ``D``. Each chosen object is read
whole and decoded in Python (Parquet through ``exporters._parquet.decode_parquet``), so the cost
is proportional to the events of the days scanned, not to the page size; there is no column
projection or predicate pushdown and S3 objects are fetched one after another. For large
archives, query the same layout with Athena or DuckDB.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import importlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import unquote, urlparse

import orjson

from audit_middleware._event import OUTCOMES
from audit_middleware._warn import warn_limited

__all__ = ["MAX_LIMIT", "ArchiveCorruptError", "ArchiveReader", "Page"]

#: The largest page size.
MAX_LIMIT: Final = 1000
INSTALL_HINT: Final = (
    "Reading the archive needs pyarrow: pip install 'audit-log-middleware[parquet]'"
)

_GLOBAL_ORG: Final = "_global"  # exporters.archive.GLOBAL_ORG, kept here to avoid the import cost
_PARTITION_MAX: Final = 200  # exporters.archive._partition_value truncates to this many chars
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_SUFFIXES: Final = (".jsonl.gz", ".parquet")
_CURSOR_VERSION: Final = 1
_MAX_CURSOR_CHARS: Final = 4096


class ArchiveCorruptError(ValueError):
    """An archive object that the query had to read is not a valid archive segment."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events, newest first; ``next_cursor`` is None on the last page."""

    events: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class _Query:
    kind: str  # "org" or "search"
    org_id: str | None
    actor: str | None
    action: str | None
    outcome: str | None
    ip: str | None
    since: str | None  # normalized timestamp text, inclusive
    until: str | None  # normalized timestamp text, exclusive
    first_day: str | None
    last_day: str | None

    def digest(self) -> str:
        fields = [self.kind, self.org_id, self.actor, self.action, self.outcome, self.ip]
        fields += [self.since, self.until]
        # json (ensure_ascii) escapes lone surrogates, which orjson would refuse.
        text = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]

    def wants_day(self, day: str, before_day: str | None) -> bool:
        """Whether day partition ``day`` (``YYYY-MM-DD``) can hold matches: within the query's
        days and not after ``before_day`` (the cursor's day)."""
        if self.first_day is not None and day < self.first_day:
            return False
        if self.last_day is not None and day > self.last_day:
            return False
        return before_day is None or day <= before_day

    def matches(self, row: Mapping[str, Any], key: tuple[str, str]) -> bool:
        occurred = key[0]
        if self.since is not None and occurred < self.since:
            return False
        if self.until is not None and occurred >= self.until:
            return False
        if self.action is not None:
            action = row.get("action")
            if not isinstance(action, str):
                return False
            if self.action.endswith(".*"):
                if not action.startswith(self.action[:-1]):
                    return False
            elif action != self.action:
                return False
        if self.outcome is not None and row.get("outcome") != self.outcome:
            return False
        if self.actor is not None:
            actor = row.get("actor")
            if not isinstance(actor, Mapping) or self.actor not in (
                actor.get("id"),
                actor.get("email"),
            ):
                return False
        if self.ip is not None:
            client = row.get("client")
            if not isinstance(client, Mapping) or client.get("ip") != self.ip:
                return False
        return True


def _pyarrow_fs() -> Any:
    try:
        return importlib.import_module("pyarrow.fs")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


class ArchiveReader:
    """Query an archive at ``url``: a local directory (or ``file://``) or ``s3://bucket/prefix``.

    For S3, the endpoint comes from ``s3_client_options["endpoint_override"]`` (``host:port``,
    with ``scheme``), else from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; credentials and
    region from ``s3_client_options`` (``access_key``, ``secret_key``, ``region``, any keyword
    of ``pyarrow.fs.S3FileSystem``) or pyarrow's default AWS chain. The reader holds no state
    between calls besides the filesystem and is safe to share between threads.
    """

    def __init__(self, url: str, *, s3_client_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError("archive URL must be a non-empty string")
        pafs = _pyarrow_fs()
        parsed = urlparse(url)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"archive URL {url!r} has no bucket: expected s3://bucket/prefix")
            options = dict(s3_client_options or {})
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if "endpoint_override" not in options and endpoint:
                ep = urlparse(endpoint)
                options["endpoint_override"] = ep.netloc or ep.path
                options.setdefault("scheme", ep.scheme or "https")
            if "endpoint_override" in options and "region" not in options:
                options["region"] = (
                    os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION")
                    or "us-east-1"
                )
            self._fs: Any = pafs.S3FileSystem(**options)
            self._root = "/".join(p for p in (parsed.netloc, parsed.path.strip("/")) if p)
        elif parsed.scheme in ("", "file"):
            if s3_client_options:
                raise ValueError("s3_client_options only apply to s3:// URLs")
            path = parsed.path if parsed.scheme == "file" else url
            self._fs = pafs.LocalFileSystem()
            self._root = os.path.abspath(path).replace(os.sep, "/").rstrip("/")
        else:
            raise ValueError(f"archive URL {url!r}: expected s3://bucket/prefix or a directory")
        self._pafs = pafs
        self.url = url

    # -- public API ----------------------------------------------------------------------------

    def get_audit_logs(
        self,
        org_id: str,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """The events of one org (never ``_global`` ones), newest first, one page at a time."""
        org = _check_org(org_id)
        query = _make_query("org", org, actor, action, outcome, None, since, until)
        return self._run(query, limit, cursor)

    def search(
        self,
        *,
        org_id: str | None = None,
        ip: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Operators' query across orgs (``org_id=None``: every org and ``_global``), e.g.
        ``search(ip="203.0.113.7", action="user.login.failed")``."""
        org = None if org_id is None else _check_org(org_id)
        query = _make_query("search", org, actor, action, outcome, ip, since, until)
        return self._run(query, limit, cursor)

    # -- listing and reading (the only places that touch the filesystem) -----------------------

    def _list(self, path: str) -> list[Any]:
        selector = self._pafs.FileSelector(path, allow_not_found=True, recursive=False)
        infos: list[Any] = self._fs.get_file_info(selector)
        return infos

    def _is_child(self, info: Any, parent: str, *, directory: bool) -> bool:
        """Whether a listed entry is a direct child of ``parent`` of the expected type (a
        defence against a store whose listing is a bare key prefix: ``org_id=a`` vs ``ab``)."""
        kind = self._pafs.FileType.Directory if directory else self._pafs.FileType.File
        return bool(info.type == kind and info.path == f"{parent}/{info.base_name}")

    def _read(self, path: str) -> bytes:
        # compression=None: the raw bytes (pyarrow would otherwise gunzip by the extension).
        with self._fs.open_input_stream(path, compression=None) as stream:
            data: bytes = stream.read()
        return data

    # -- the query -----------------------------------------------------------------------------

    def _partitions(
        self, query: _Query, before_day: str | None
    ) -> dict[str, list[tuple[str, str]]]:
        """``{day: [(partition value, directory)]}`` of the days the query may need."""
        if query.org_id is not None:
            value = _partition_value(query.org_id)
            org_dirs = [(value, f"{self._root}/org_id={value}")]
        else:
            org_dirs = []
            for info in self._list(self._root):
                name = info.base_name
                if self._is_child(info, self._root, directory=True) and name.startswith("org_id="):
                    org_dirs.append((name[len("org_id=") :], info.path))
        days: dict[str, list[tuple[str, str]]] = {}
        for value, org_dir in org_dirs:
            for info in self._list(org_dir):
                name = info.base_name
                if not self._is_child(info, org_dir, directory=True) or not name.startswith("dt="):
                    continue
                day = name[3:]
                if not _DAY.fullmatch(day):
                    continue
                if not query.wants_day(day, before_day):
                    continue
                days.setdefault(day, []).append((value, info.path))
        return days

    def _objects(self, directory: str) -> list[str]:
        paths = [
            info.path
            for info in self._list(directory)
            if self._is_child(info, directory, directory=False)
            and not info.base_name.startswith(".")  # the local store's temporary files
            and info.base_name.endswith(_SUFFIXES)
        ]
        return sorted(paths)

    def _rows(self, query: _Query, value: str, path: str) -> Iterable[dict[str, Any]]:
        """The rows of one object, with ``org_id`` set; rows of other orgs are dropped."""
        data = self._read(path)
        if path.endswith(".parquet"):
            if not _parquet_attributable(query, value, path):
                return []
            org = None if value == _GLOBAL_ORG else unquote(value)
            if query.org_id is not None and org != query.org_id:
                return []
            return [_with_org(row, org) for row in _decode_parquet(data, path)]
        rows = _decode_jsonl(data, path)
        if query.org_id is None:
            return rows
        return [row for row in rows if row.get("org_id") == query.org_id]

    def _run(self, query: _Query, limit: int, cursor: str | None) -> Page:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        after = None if cursor is None else _decode_cursor(cursor, query.digest())
        partitions = self._partitions(query, None if after is None else after[0][:10])
        found: dict[str, tuple[tuple[str, str], dict[str, Any]]] = {}
        for day in sorted(partitions, reverse=True):
            for value, directory in partitions[day]:
                for path in self._objects(directory):
                    for row in self._rows(query, value, path):
                        key = _row_key(row, path)
                        if key[1] in found or (after is not None and key >= after):
                            continue
                        if query.matches(row, key):
                            found[key[1]] = (key, row)
            if len(found) > limit:
                break  # older days hold only older events
        ordered = sorted(found.values(), key=lambda item: item[0], reverse=True)
        page = ordered[:limit]
        next_cursor = None
        if len(ordered) > limit:
            next_cursor = _encode_cursor(page[-1][0], query.digest())
        return Page(events=[row for _, row in page], next_cursor=next_cursor)


# -- helpers -------------------------------------------------------------------------------------


def _partition_value(org_id: str) -> str:
    from exporters.archive import _partition_value as writer_encoding

    return writer_encoding(org_id)


def _parquet_attributable(query: _Query, value: str, path: str) -> bool:
    """Whether the rows of Parquet object ``path`` in partition ``value`` belong to its org.

    A partition value at the writer's length cap may be a truncated org id shared by several
    orgs: an org query raises ``ValueError``, a search skips the object with a warning.
    """
    if len(value) < _PARTITION_MAX:
        return True
    if query.kind == "org":
        raise ValueError(
            "this org id is too long to be isolated in a Parquet archive (its "
            "partition directory may be shared with other orgs)"
        )
    warn_limited(
        "query-ambiguous-parquet",
        "audit archive query: skipped Parquet object %s in a possibly truncated org partition",
        path,
    )
    return False


def _check_org(org_id: object) -> str:
    if not isinstance(org_id, str) or not org_id:
        raise ValueError("org_id must be a non-empty string")
    if "\x00" in org_id:
        raise ValueError("org_id must not contain NUL")
    try:
        org_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("org_id must be valid Unicode (no lone surrogates)") from exc
    return org_id


def _check_value(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    return value


def _timestamp_text(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def _moment(name: str, value: datetime | str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{name} must be an RFC 3339 timestamp, got {value[:64]!r}") from exc
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise TypeError(f"{name} must be a datetime, an RFC 3339 string or None")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{name} must carry a timezone (naive datetimes are ambiguous)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{name} is out of range") from exc


def _make_query(
    kind: str,
    org: str | None,
    actor: object,
    action: object,
    outcome: object,
    ip: object,
    since: datetime | str | None,
    until: datetime | str | None,
) -> _Query:
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES} or None")
    since_at = None if since is None else _moment("since", since)
    until_at = None if until is None else _moment("until", until)
    if since_at is not None and until_at is not None and since_at > until_at:
        raise ValueError("since must not be after until")
    last_day = None
    if until_at is not None:
        last_day = _timestamp_text(until_at - timedelta(microseconds=1))[:10]
    since_text = None if since_at is None else _timestamp_text(since_at)
    return _Query(
        kind=kind,
        org_id=org,
        actor=_check_value("actor", actor),
        action=_check_value("action", action),
        outcome=_check_value("outcome", outcome),
        ip=_check_value("ip", ip),
        since=since_text,
        until=None if until_at is None else _timestamp_text(until_at),
        first_day=None if since_text is None else since_text[:10],
        last_day=last_day,
    )


def _row_key(row: Mapping[str, Any], path: str) -> tuple[str, str]:
    event_id, occurred = row.get("id"), row.get("occurred_at")
    if not isinstance(event_id, str) or not isinstance(occurred, str):
        raise ArchiveCorruptError(f"archive object {path}: an event lacks a string id/occurred_at")
    if _TIMESTAMP.fullmatch(occurred):
        return occurred, event_id
    try:
        return _timestamp_text(_moment("occurred_at", occurred)), event_id
    except ValueError as exc:
        raise ArchiveCorruptError(f"archive object {path}: bad occurred_at {occurred!r}") from exc


def _decode_jsonl(data: bytes, path: str) -> list[dict[str, Any]]:
    try:
        lines = gzip.decompress(data).splitlines()
        rows = [orjson.loads(line) for line in lines if line.strip()]
    except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
        raise ArchiveCorruptError(f"archive object {path} is not gzip JSON lines: {exc}") from exc
    if not all(isinstance(row, dict) for row in rows):
        raise ArchiveCorruptError(f"archive object {path} holds a line that is not an object")
    return rows


def _decode_parquet(data: bytes, path: str) -> list[dict[str, Any]]:
    from exporters._parquet import decode_parquet

    try:
        return decode_parquet(data)
    except ImportError:
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for garbage
        raise ArchiveCorruptError(f"archive object {path} is not an audit Parquet file") from exc


def _with_org(row: dict[str, Any], org: str | None) -> dict[str, Any]:
    """``row`` with ``org_id`` restored, in the schema's key order (after ``outcome``)."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        out[name] = value
        if name == "outcome":
            out["org_id"] = org
    out.setdefault("org_id", org)
    return out


def _encode_cursor(key: tuple[str, str], digest: str) -> str:
    raw = orjson.dumps({"v": _CURSOR_VERSION, "k": list(key), "q": digest})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: object, digest: str) -> tuple[str, str]:
    if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR_CHARS:
        raise ValueError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
        raise ValueError("invalid cursor")
    key = data.get("k")
    if (
        not isinstance(key, list)
        or len(key) != 2
        or not all(isinstance(part, str) for part in key)
        or not _TIMESTAMP.fullmatch(key[0])
    ):
        raise ValueError("invalid cursor")
    if data.get("q") != digest:
        raise ValueError("cursor does not match this query")
    return key[0], key[1]
