"""The embedded query engine: DuckDB over the archive's objects, read through ``pyarrow``.

:class:`DuckDBEngine` answers exactly the queries of :class:`~audit_middleware.query.ArchiveReader`
(``get_audit_logs`` and ``search``) with the same results, order, de-duplication, errors and
cursors (a cursor from one works with the other). It *is* an ``ArchiveReader`` (a subclass), so
the retrieval router and ``audit-log query --engine duckdb`` take it unchanged. Only the
execution differs:

1. **Partition pruning by listing.** Only the requested org's ``org_id=<encoded org>``
   directory is listed (one recursive listing), and only its ``dt=`` days within
   ``[since, until)`` and older than the cursor are kept, as the reader does.
2. **A pyarrow scan with pushdown, then DuckDB.** The chosen Parquet and JSON-lines objects
   become two ``pyarrow.dataset`` datasets (one fragment per object, tagged with a
   ``file_no`` partition column). Each is scanned with only the needed columns (projection,
   nested ``actor.id``/``client.ip`` included) and the query's filters pushed down as pyarrow
   expressions (time range, cursor bound, action, outcome, actor, IP, and the row's org for
   JSON lines); Parquet row groups are skipped by the statistics of ``occurred_at_text``.
   pyarrow reads in its own threads with the GIL released. DuckDB then runs a fixed SQL text
   over the two scans: the same filters again, ``GROUP BY occurred, id`` (de-duplication),
   newest first, ``LIMIT limit + 1``. Every filter value is a bound parameter (``?`` in SQL,
   a Python value in a pyarrow expression); nothing from the caller is formatted into SQL,
   paths or globs. (DuckDB scanning the datasets itself holds the GIL while pyarrow fetches
   from S3, which stalls other Python threads and an in-process S3 endpoint: hence the
   scan first.)
3. **Page rows.** Only the objects holding the page's events are read again, the full events
   decoded as the reader decodes them, and each row re-checked in Python (the org of a
   JSON-lines row, and every filter) before it is returned.

Days are queried newest first in growing windows (8, 16, 32, ... days) and the query stops once a
window completes with more than ``limit`` events, relying on the writer's invariant that
``dt=D`` holds only events of day ``D`` (as the reader's early stop does).

Differences from the reader, all in damaged archives only: an unreadable or foreign object in
a window being queried raises :class:`~audit_middleware.query.ArchiveCorruptError` (the
message names DuckDB's or pyarrow's error) even when the reader would have stopped before it;
an org id too long to be isolated raises ``ValueError`` as soon as its partition holds a
Parquet object; copies of one id are assumed identical (the writer's redeliveries are).

Offline by construction: DuckDB reads nothing itself (``enable_external_access`` is off,
extension auto-install and auto-load are off, ``httpfs`` is never installed or loaded); all
bytes come through ``pyarrow.fs`` (local or ``S3FileSystem``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from audit_middleware.query import (
    _DAY,
    _GLOBAL_ORG,
    _SUFFIXES,
    MAX_LIMIT,
    ArchiveCorruptError,
    ArchiveReader,
    Page,
    _decode_cursor,
    _decode_jsonl,
    _encode_cursor,
    _parquet_attributable,
    _partition_value,
    _Query,
    _row_key,
    _with_org,
)

__all__ = ["INSTALL_HINT", "DuckDBEngine", "duckdb_available"]

INSTALL_HINT: Final = (
    "The DuckDB query engine needs duckdb and pyarrow: pip install 'audit-log-middleware[duckdb]'"
)

_FILE_NO: Final = "file_no"
_FIRST_WINDOW_DAYS: Final = 8
_CONFIG: Final = {
    "enable_external_access": False,  # DuckDB itself opens no file, URL or extension
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}


def duckdb_available() -> bool:
    """Whether ``duckdb`` and ``pyarrow.dataset`` can be imported."""
    try:
        importlib.import_module("duckdb")
        importlib.import_module("pyarrow.dataset")
    except ImportError:
        return False
    return True


def _modules() -> tuple[Any, Any, Any, Any]:
    """``(duckdb, pyarrow, pyarrow.dataset, pyarrow.json)``, or ImportError naming the extra."""
    try:
        duckdb = importlib.import_module("duckdb")
        pa = importlib.import_module("pyarrow")
        pads = importlib.import_module("pyarrow.dataset")
        pajson = importlib.import_module("pyarrow.json")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return duckdb, pa, pads, pajson


@dataclass(frozen=True, slots=True)
class _Object:
    path: str
    value: str  # the org partition value (percent-encoded, or _global)
    parquet: bool


class DuckDBEngine(ArchiveReader):
    """Query the archive at ``url`` with DuckDB; same arguments, results and cursors as
    :class:`~audit_middleware.query.ArchiveReader` (``s3_client_options`` likewise).

    Safe to share between threads: each query runs on its own DuckDB cursor.
    """

    def __init__(self, url: str, *, s3_client_options: Mapping[str, Any] | None = None) -> None:
        duckdb, pa, pads, pajson = _modules()
        super().__init__(url, s3_client_options=s3_client_options)
        from exporters._parquet import arrow_schema

        self._duckdb = duckdb
        self._pa = pa
        self._pads = pads
        file_no = pa.field(_FILE_NO, pa.int32(), nullable=False)
        self._parquet_schema = arrow_schema()
        self._parquet_dataset_schema = self._parquet_schema.append(file_no)
        self._parquet_format = pads.ParquetFileFormat()
        # The JSON-lines columns the query needs; other keys are skipped while parsing.
        json_schema = pa.schema(
            [
                ("id", pa.string()),
                ("occurred_at", pa.string()),
                ("action", pa.string()),
                ("outcome", pa.string()),
                ("org_id", pa.string()),
                ("actor", pa.struct([("id", pa.string()), ("email", pa.string())])),
                ("client", pa.struct([("ip", pa.string())])),
            ]
        )
        self._json_dataset_schema = json_schema.append(file_no)
        self._json_format = pads.JsonFileFormat(
            parse_options=pajson.ParseOptions(
                explicit_schema=json_schema, unexpected_field_behavior="ignore"
            )
        )
        self._con: Any = duckdb.connect(":memory:", config=dict(_CONFIG))

    def close(self) -> None:
        """Close the DuckDB connection (the engine cannot be used afterwards)."""
        self._con.close()

    # -- the query -----------------------------------------------------------------------------

    def _run(self, query: _Query, limit: int, cursor: str | None) -> Page:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        digest = query.digest()
        after = None if cursor is None else _decode_cursor(cursor, digest)
        if not _encodable(query):  # a lone surrogate matches no stored value
            return Page(events=[], next_cursor=None)
        by_day = self._listing(query, None if after is None else after[0][:10])
        days = sorted(by_day, reverse=True)
        keys: list[tuple[str, str, _Object]] = []
        seen: set[str] = set()
        start, size = 0, _FIRST_WINDOW_DAYS
        while start < len(days):
            objects = [obj for day in days[start : start + size] for obj in by_day[day]]
            for occurred, event_id, obj in self._keys(query, objects, after, limit + 1):
                if event_id not in seen:
                    seen.add(event_id)
                    keys.append((occurred, event_id, obj))
            if len(keys) > limit:
                break  # older days hold only older events
            start, size = start + size, size * 2
        keys.sort(key=lambda item: (item[0], item[1]), reverse=True)
        page_keys = keys[:limit]
        rows = self._fetch(query, page_keys)
        events = [rows[event_id] for _, event_id, _ in page_keys if event_id in rows]
        next_cursor = None
        if len(keys) > limit:
            next_cursor = _encode_cursor((page_keys[-1][0], page_keys[-1][1]), digest)
        return Page(events=events, next_cursor=next_cursor)

    def _listing(self, query: _Query, before_day: str | None) -> dict[str, list[_Object]]:
        """``{day: objects}`` of the partitions the query may need, in reading order."""
        pafs = self._pafs
        if query.org_id is not None:
            value = _partition_value(query.org_id)
            org_dirs = [(value, f"{self._root}/org_id={value}")]
        else:
            org_dirs = sorted(
                (info.base_name[len("org_id=") :], info.path)
                for info in self._list(self._root)
                if self._is_child(info, self._root, directory=True)
                and info.base_name.startswith("org_id=")
            )
        days: dict[str, list[_Object]] = {}
        for value, org_dir in org_dirs:
            selector = pafs.FileSelector(org_dir, allow_not_found=True, recursive=True)
            found: list[tuple[str, str]] = []
            for info in self._fs.get_file_info(selector):
                rest = info.path[len(org_dir) + 1 :] if info.path.startswith(org_dir + "/") else ""
                parts = rest.split("/")
                if info.type != pafs.FileType.File or len(parts) != 2:
                    continue
                folder, name = parts
                day = folder[3:]
                if not folder.startswith("dt=") or not _DAY.fullmatch(day):
                    continue
                if name.startswith(".") or not name.endswith(_SUFFIXES):
                    continue
                if not query.wants_day(day, before_day):
                    continue
                found.append((day, info.path))
            for day, path in sorted(found):
                obj = self._object(query, value, path)
                if obj is not None:
                    days.setdefault(day, []).append(obj)
        return days

    def _object(self, query: _Query, value: str, path: str) -> _Object | None:
        if not path.endswith(".parquet"):
            return _Object(path, value, parquet=False)
        if not _parquet_attributable(query, value, path):
            return None
        return _Object(path, value, parquet=True)

    def _dataset(self, objects: Sequence[tuple[int, _Object]], parquet: bool) -> Any:
        pa, pads = self._pa, self._pads
        fmt = self._parquet_format if parquet else self._json_format
        fragments = []
        for number, obj in objects:
            tag = pads.field(_FILE_NO) == pa.scalar(number, pa.int32())
            fragment = fmt.make_fragment(obj.path, self._fs, partition_expression=tag)
            if parquet:
                try:
                    schema = fragment.physical_schema  # reads (and keeps) the footer
                except (pa.ArrowException, OSError) as exc:
                    raise ArchiveCorruptError(
                        f"archive object {obj.path} is not an audit Parquet file: {exc}"
                    ) from exc
                if not schema.equals(self._parquet_schema, check_metadata=False):
                    raise ArchiveCorruptError(
                        f"archive object {obj.path} is not an audit Parquet file of this "
                        "schema version"
                    )
            fragments.append(fragment)
        schema = self._parquet_dataset_schema if parquet else self._json_dataset_schema
        return pads.FileSystemDataset(fragments, schema, fmt, self._fs)

    def _keys(
        self,
        query: _Query,
        objects: Sequence[_Object],
        after: tuple[str, str] | None,
        count: int,
    ) -> list[tuple[str, str, _Object]]:
        """The newest ``count`` distinct matching keys among ``objects``, newest first."""
        if not objects:
            return []
        numbered = list(enumerate(objects))
        parts: list[str] = []
        params: list[object] = []
        con = self._con.cursor()
        try:
            for parquet in (True, False):
                chosen = [(n, obj) for n, obj in numbered if obj.parquet == parquet]
                if not chosen:
                    continue
                name = "audit_parquet" if parquet else "audit_jsonl"
                row_org = not parquet and query.org_id is not None
                con.register(name, self._scan(query, after, chosen, parquet, row_org))
                where, values = _where(query, after, row_org=row_org)
                # Only constant names and ?-placeholders are formatted in; values are bound.
                parts.append(
                    f"SELECT occurred, id, {_FILE_NO} FROM {name} WHERE {where}"  # noqa: S608
                )
                params += values
            sql = (
                f"SELECT occurred, id, min({_FILE_NO}) FROM (\n"  # noqa: S608
                + "\nUNION ALL\n".join(parts)
                + "\n) GROUP BY occurred, id "
                "ORDER BY occurred DESC NULLS FIRST, id DESC NULLS FIRST LIMIT ?"
            )
            params.append(count)
            rows = con.execute(sql, params).fetchall()
        finally:
            con.close()
        out: list[tuple[str, str, _Object]] = []
        for occurred, event_id, number in rows:
            obj = objects[number]
            if not isinstance(event_id, str) or not isinstance(occurred, str):
                raise ArchiveCorruptError(
                    f"archive object {obj.path}: an event lacks a string id/occurred_at"
                )
            key = _row_key({"id": event_id, "occurred_at": occurred}, obj.path)
            if key != (occurred, event_id):  # not the canonical text: compared wrongly
                raise ArchiveCorruptError(
                    f"archive object {obj.path}: occurred_at {occurred!r} is not canonical"
                )
            out.append((occurred, event_id, obj))
        return out

    def _scan(
        self,
        query: _Query,
        after: tuple[str, str] | None,
        objects: Sequence[tuple[int, _Object]],
        parquet: bool,
        row_org: bool,
    ) -> Any:
        """The projected, pre-filtered rows of ``objects`` as an Arrow table (pyarrow's scan,
        with the filters pushed down: Parquet row groups are skipped by their statistics).

        pyarrow reads in its own threads with the GIL released; DuckDB then works on memory.
        """
        pads = self._pads
        field = pads.field
        time_column = "occurred_at_text" if parquet else "occurred_at"
        columns = {"occurred": field(time_column), "id": field("id"), _FILE_NO: field(_FILE_NO)}
        when = field(time_column)
        conditions = []
        if row_org:
            columns["row_org"] = field("org_id")
            conditions.append(field("org_id") == query.org_id)
        if query.since is not None:
            conditions.append(when >= query.since)
        if query.until is not None:
            conditions.append(when < query.until)
        if after is not None:
            conditions.append((when < after[0]) | ((when == after[0]) & (field("id") < after[1])))
        if query.action is not None:
            columns["action"] = field("action")
            if query.action.endswith(".*"):
                pc = importlib.import_module("pyarrow.compute")
                conditions.append(pc.starts_with(field("action"), pattern=query.action[:-1]))
            else:
                conditions.append(field("action") == query.action)
        if query.outcome is not None:
            columns["outcome"] = field("outcome")
            conditions.append(field("outcome") == query.outcome)
        if query.actor is not None:
            columns["actor_id"] = field("actor", "id")
            columns["actor_email"] = field("actor", "email")
            conditions.append(
                (field("actor", "id") == query.actor) | (field("actor", "email") == query.actor)
            )
        if query.ip is not None:
            columns["client_ip"] = field("client", "ip")
            conditions.append(field("client", "ip") == query.ip)
        condition = None
        for item in conditions:
            condition = item if condition is None else condition & item
        dataset = self._dataset(objects, parquet)
        try:
            return dataset.to_table(columns=columns, filter=condition)
        except (self._pa.ArrowException, OSError) as exc:
            raise ArchiveCorruptError(
                f"archive objects under {self._root} could not be read: {exc}"
            ) from exc

    def _fetch(
        self, query: _Query, keys: Sequence[tuple[str, str, _Object]]
    ) -> dict[str, dict[str, Any]]:
        """The full events of ``keys`` by id, read from their objects and checked again."""
        wanted: dict[str, dict[str, str]] = {}  # path -> {id: occurred}
        owners: dict[str, _Object] = {}
        for occurred, event_id, obj in keys:
            wanted.setdefault(obj.path, {})[event_id] = occurred
            owners[obj.path] = obj
        out: dict[str, dict[str, Any]] = {}
        for path, ids in wanted.items():
            obj = owners[path]
            if obj.parquet:
                org = None if obj.value == _GLOBAL_ORG else _unquote(obj.value)
                rows = [_with_org(row, org) for row in self._parquet_rows(path, list(ids))]
            else:
                rows = _decode_jsonl(self._read(path), path)
            for row in rows:
                row_id = row.get("id")
                if not isinstance(row_id, str) or row_id not in ids or row_id in out:
                    continue
                if query.org_id is not None and row.get("org_id") != query.org_id:
                    continue  # the tenant check, again
                key = _row_key(row, path)
                if key == (ids[row_id], row_id) and query.matches(row, key):
                    out[row_id] = row
        return out

    def _parquet_rows(self, path: str, ids: list[str]) -> list[dict[str, Any]]:
        from exporters._parquet import _TIMESTAMPS, events_from_table

        pads = self._pads
        fragment = self._parquet_format.make_fragment(path, self._fs)
        columns = [name for name in self._parquet_schema.names if name not in _TIMESTAMPS]
        try:
            table = fragment.to_table(
                schema=self._parquet_schema,
                columns=columns,
                filter=pads.field("id").isin(ids),
            )
        except (self._pa.ArrowException, OSError) as exc:
            raise ArchiveCorruptError(f"archive object {path} could not be read: {exc}") from exc
        return events_from_table(table)


def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


def _encodable(query: _Query) -> bool:
    for value in (query.actor, query.action, query.ip):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _where(
    query: _Query, after: tuple[str, str] | None, *, row_org: bool
) -> tuple[str, list[object]]:
    """The WHERE clause over :meth:`DuckDBEngine._scan`'s columns (fixed text, ``?``
    placeholders) and its values, in order."""
    clauses: list[str] = ["TRUE"]
    values: list[object] = []
    if row_org:
        clauses.append("row_org = ?")
        values.append(query.org_id)
    if query.since is not None:
        clauses.append("occurred >= ?")
        values.append(query.since)
    if query.until is not None:
        clauses.append("occurred < ?")
        values.append(query.until)
    if after is not None:
        clauses.append("(occurred < ? OR (occurred = ? AND id < ?))")
        values += [after[0], after[0], after[1]]
    if query.action is not None:
        if query.action.endswith(".*"):
            clauses.append("starts_with(action, ?)")
            values.append(query.action[:-1])
        else:
            clauses.append("action = ?")
            values.append(query.action)
    if query.outcome is not None:
        clauses.append("outcome = ?")
        values.append(query.outcome)
    if query.actor is not None:
        clauses.append("(actor_id = ? OR actor_email = ?)")
        values += [query.actor, query.actor]
    if query.ip is not None:
        clauses.append("client_ip = ?")
        values.append(query.ip)
    return " AND ".join(clauses), values
