"""Amazon Athena over the S3 archive: table DDL derived from the event schema, and a reader.

:func:`ddl` returns the ``CREATE EXTERNAL TABLE`` statement for the archive's JSON-lines or
Parquet objects. The columns are not written out by hand: they come from the published JSON
Schema (``audit_middleware/schema/audit-event.v1.json``) through the same derivation that
``exporters._parquet.arrow_schema()`` uses, so the table, the schema and the Parquet files
cannot drift apart.

Column types (JSON Schema -> Athena):

* ``string``/``enum`` -> ``string``; ``integer`` -> ``bigint`` (``int`` for
  ``schema_version`` and ``request.status``, as in the Parquet files); ``number`` ->
  ``double``; ``boolean`` -> ``boolean``.
* An object with fixed properties -> ``struct<...>`` of its properties.
* A free-form object (``metadata``, ``request.query``, ``request.headers``, ``integrity``):

  - Parquet: ``string`` holding compact JSON (that is how the files store it). Read it with
    ``json_extract(metadata, '$.key')``.
  - JSON lines: ``map<string,string>``. The Hive JSON SerDe cannot read a JSON object into a
    ``string`` column, and a free-form object has no fixed struct. A ``map<string,string>``
    reads flat objects whose values are scalars (headers always are; query parameters,
    metadata and integrity usually are). **Limitation:** a nested object or array inside one
    of these values (a repeated query parameter, nested metadata) is not something this
    declaration can represent. Use the Parquet archive when such values must be queried.

* ``occurred_at``: JSON lines declare it ``string`` (RFC 3339 text with a ``T`` and ``Z``,
  which an Athena ``timestamp`` column would read as NULL; query it with
  ``from_iso8601_timestamp(occurred_at)``, or compare the text: it is fixed-width, so text
  order is time order). Parquet stores a native ``timestamp`` (milliseconds, what Athena
  reads) plus ``occurred_at_text string`` with the exact microsecond text.

``org_id`` and ``dt`` are partition columns (the object keys are
``<prefix>/org_id=<org>/dt=<yyyy-MM-dd>/...``) with partition projection. ``dt`` is a
``date`` projection. ``org_id`` is ``injected`` by default: Athena then refuses any query
without a static equality on ``org_id``, so every query is scoped to one tenant. An
operator's cross-org table uses ``enum`` with the org ids listed.

:class:`AthenaEngine` reads one org's events through ``StartQueryExecution``. The SQL text is
fixed; filter values travel in ``ExecutionParameters``. See its docstring for the one
exception, the org id, and for how parameters are encoded.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

__all__ = [
    "AthenaEngine",
    "AthenaQueryError",
    "SelectStatement",
    "ddl",
    "select_statement",
]

Format = Literal["jsonl", "parquet"]

_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,254}")
_DATABASE = re.compile(r"[a-z_][a-z0-9_]{0,254}")
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_LOCATION = re.compile(rf"s3://{_BUCKET}(/[A-Za-z0-9_.=-]+)*/?")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: Org ids that can be written into SQL as a literal and equal their archive path segment.
_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

_SERDE: Final = "org.apache.hive.hcatalog.data.JsonSerDe"
_SCALAR_TYPES: Final = {
    "string": "string",
    "int32": "int",
    "int64": "bigint",
    "float64": "double",
    "bool": "boolean",
}
_JSONL_FREE_FORM: Final = "map<string,string>"

#: Defaults standing for "no bound", so the SQL text never changes with the filters given.
_MIN_TIME: Final = "0001-01-01T00:00:00.000000Z"
_MAX_TIME: Final = "9999-12-31T23:59:59.999999Z"
_MIN_DAY: Final = "0001-01-01"
_MAX_DAY: Final = "9999-12-31"
MAX_LIMIT: Final = 10_000
_MAX_VALUE_CHARS: Final = 1024


# -- DDL ---------------------------------------------------------------------------------------


def _plan() -> tuple[Any, ...]:
    from exporters import _parquet

    return _parquet._plan()


def _timestamp_text_columns() -> Mapping[str, str]:
    from exporters import _parquet

    return _parquet._TIMESTAMPS


def _hive_type(node: Any, format: Format) -> str:
    if node.kind == "struct":
        fields = ",".join(f"{child.name}:{_hive_type(child, format)}" for child in node.children)
        return f"struct<{fields}>"
    if node.kind == "json":
        return "string" if format == "parquet" else _JSONL_FREE_FORM
    if node.kind == "timestamp":
        return "timestamp" if format == "parquet" else "string"
    return _SCALAR_TYPES[node.kind]


def columns(format: Format) -> list[tuple[str, str]]:
    """``(name, Athena type)`` of the table's data columns, in schema order."""
    text_columns = _timestamp_text_columns()
    out: list[tuple[str, str]] = []
    for node in _plan():
        out.append((node.name, _hive_type(node, format)))
        if node.kind == "timestamp" and format == "parquet":
            out.append((text_columns[node.path], "string"))
    return out


def _check_format(format: str) -> Format:
    if format == "jsonl":
        return "jsonl"
    if format == "parquet":
        return "parquet"
    raise ValueError(f"format must be 'jsonl' or 'parquet', got {format!r}")


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise ValueError(f"table must match {_TABLE.pattern}, got {table!r}")
    return table


def _check_org(org_id: object) -> str:
    if not isinstance(org_id, str) or not _ORG.fullmatch(org_id) or org_id == "_global":
        raise ValueError(
            f"org id must match {_ORG.pattern} to be queried through Athena, got {org_id!r:.80}"
        )
    return org_id


def ddl(
    table: str,
    location: str,
    *,
    format: Format,
    projection_start: str = "2026-01-01",
    org_projection: Literal["injected", "enum"] = "injected",
    orgs: Sequence[str] = (),
) -> str:
    """The ``CREATE EXTERNAL TABLE IF NOT EXISTS`` statement for the archive at ``location``.

    ``location`` is the archive's ``s3://bucket/prefix`` (the objects are under
    ``org_id=<org>/dt=<day>/``). ``org_projection="enum"`` needs the ``orgs``; ``injected``
    must not get any. Every identifier and value is validated against a strict pattern
    before it is written into the statement.
    """
    _check_table(table)
    fmt = _check_format(format)
    if not isinstance(location, str) or not _LOCATION.fullmatch(location):
        raise ValueError(f"location must be s3://bucket[/prefix] (no quotes), got {location!r}")
    if not _DAY.fullmatch(projection_start):
        raise ValueError(f"projection_start must be yyyy-MM-dd, got {projection_start!r}")
    datetime.strptime(projection_start, "%Y-%m-%d")  # a real day
    root = location.rstrip("/") + "/"
    properties = [
        ("projection.enabled", "true"),
    ]
    if org_projection == "injected":
        if orgs:
            raise ValueError("orgs are only for org_projection='enum'")
        properties.append(("projection.org_id.type", "injected"))
    elif org_projection == "enum":
        if not orgs:
            raise ValueError("org_projection='enum' needs at least one org")
        checked = [_check_org(org) for org in orgs]
        properties.append(("projection.org_id.type", "enum"))
        properties.append(("projection.org_id.values", ",".join(checked)))
    else:
        raise ValueError(f"org_projection must be 'injected' or 'enum', got {org_projection!r}")
    properties += [
        ("projection.dt.type", "date"),
        ("projection.dt.format", "yyyy-MM-dd"),
        ("projection.dt.range", f"{projection_start},NOW"),
        ("projection.dt.interval", "1"),
        ("projection.dt.interval.unit", "DAYS"),
        ("storage.location.template", root + "org_id=${org_id}/dt=${dt}/"),
    ]
    body = ",\n".join(f"  `{name}` {kind}" for name, kind in columns(fmt))
    storage = "STORED AS PARQUET" if fmt == "parquet" else f"ROW FORMAT SERDE '{_SERDE}'"
    props = ",\n".join(f"  '{key}' = '{value}'" for key, value in properties)
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{table}` (\n{body}\n)\n"
        "PARTITIONED BY (`org_id` string, `dt` string)\n"
        f"{storage}\n"
        f"LOCATION '{root}'\n"
        f"TBLPROPERTIES (\n{props}\n)"
    )


# -- query -------------------------------------------------------------------------------------


class AthenaQueryError(RuntimeError):
    """An Athena query failed, was cancelled, timed out or scanned too much."""

    def __init__(self, message: str, *, query_execution_id: str | None = None) -> None:
        super().__init__(message)
        self.query_execution_id = query_execution_id


@dataclass(frozen=True, slots=True)
class SelectStatement:
    """A fixed SQL text with ``?`` placeholders and the raw values for them, in order."""

    sql: str
    values: tuple[str, ...]

    def execution_parameters(self) -> list[str]:
        """The values as Athena ``ExecutionParameters``: quoted SQL string literals."""
        return [_string_literal(value) for value in self.values]


def _string_literal(value: str) -> str:
    # Athena parses each execution parameter as a SQL literal, so a string value has to be
    # quoted; doubling the quote keeps any value (', --, ;) inside the literal.
    return "'" + value.replace("'", "''") + "'"


def _filter_value(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty (pass None for no filter)")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL")
    if len(value) > _MAX_VALUE_CHARS:
        raise ValueError(f"{name} is longer than {_MAX_VALUE_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} must be valid Unicode") from exc
    return value


def _time_text(name: str, value: datetime | str | None, default: str) -> str:
    if value is None:
        return default
    from audit_middleware.query import _moment, _timestamp_text

    return _timestamp_text(_moment(name, value))


def _select_list(format: Format) -> tuple[list[str], list[str]]:
    """(SQL select items, result names) for the data columns."""
    items: list[str] = []
    names: list[str] = []
    for node in _plan():
        name = node.name
        if node.kind == "timestamp":
            text = _timestamp_text_columns()[node.path] if format == "parquet" else name
            items.append(f'"{text}" AS "{name}"')
        elif node.kind == "struct" or (node.kind == "json" and format == "jsonl"):
            items.append(f'json_format(CAST("{name}" AS JSON)) AS "{name}"')
        else:
            items.append(f'"{name}"')
        names.append(name)
    return items, names


def select_statement(
    table: str,
    org_id: str,
    *,
    format: Format = "jsonl",
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    limit: int = 100,
) -> SelectStatement:
    """The SELECT for one org's events, newest first (``occurred_at`` desc, ``id`` desc).

    The text depends only on ``table``, ``org_id``, ``format`` and ``limit`` (all validated);
    every filter is always present and takes its value from a parameter. An absent filter
    gets ``''`` (``actor``/``action``/``outcome``) or an open bound (times, days).
    ``action`` ending in ``.*`` is a prefix match, as in :class:`ArchiveReader`.
    """
    _check_table(table)
    fmt = _check_format(format)
    org = _check_org(org_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    actor_value = _filter_value("actor", actor)
    action_value = _filter_value("action", action)
    exact, prefix = ("", action_value[:-1]) if action_value.endswith(".*") else (action_value, "")
    outcome_value = _filter_value("outcome", outcome)
    since_text = _time_text("since", since, _MIN_TIME)
    until_text = _time_text("until", until, _MAX_TIME)
    if since_text > until_text:
        raise ValueError("since must not be after until")
    first_day = since_text[:10] if since is not None else _MIN_DAY
    last_day = until_text[:10] if until is not None else _MAX_DAY
    time_column = '"occurred_at_text"' if fmt == "parquet" else '"occurred_at"'
    items, _ = _select_list(fmt)
    select = ",\n  ".join(items)
    # org_id is a literal: see AthenaEngine. It matched _ORG, so it needs no escaping.
    sql = (
        f'SELECT\n  {select}\nFROM "{table}"\n'
        f"WHERE \"org_id\" = '{org}'\n"
        '  AND "dt" >= ? AND "dt" <= ?\n'
        f"  AND {time_column} >= ? AND {time_column} < ?\n"
        '  AND (? = \'\' OR "actor"."id" = ? OR "actor"."email" = ?)\n'
        "  AND (? = '' OR \"action\" = ?)\n"
        "  AND (? = '' OR starts_with(\"action\", ?))\n"
        "  AND (? = '' OR \"outcome\" = ?)\n"
        f'ORDER BY {time_column} DESC, "id" DESC\n'
        f"LIMIT {limit}"
    )
    values = (
        first_day,
        last_day,
        since_text,
        until_text,
        actor_value,
        actor_value,
        actor_value,
        exact,
        exact,
        prefix,
        prefix,
        outcome_value,
        outcome_value,
    )
    return SelectStatement(sql, values)


def _convert(node: Any, text: str | None) -> Any:
    if text is None:
        return None
    if node.kind in ("struct", "json"):
        return json.loads(text)
    if node.kind in ("int32", "int64"):
        return int(text)
    if node.kind == "float64":
        return float(text)
    if node.kind == "bool":
        return text == "true"
    return text


def _restore(node: Any, value: Any) -> Any:
    """Give a struct's JSON (all keys present, absent ones null) the event's shape back."""
    if node.kind == "json" and isinstance(value, str):
        return json.loads(value)  # Parquet: a JSON text column inside a struct
    if node.kind != "struct" or not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for child in node.children:
        item = value.get(child.name)
        if item is None and not child.required:
            continue
        out[child.name] = _restore(child, item)
    return out


class AthenaEngine:
    """Reads one org's audit events from an Athena table made with :func:`ddl`.

    Parameters: ``database`` and optional ``workgroup`` / ``output_location`` are passed to
    ``StartQueryExecution``. ``client`` is a boto3 ``athena`` client (default: a new one
    from boto3's standard configuration). ``format`` is the table's format.

    **How values reach Athena.** The SQL text is fixed. Filter values (actor, action,
    outcome, since, until and the derived day bounds) are ``?`` placeholders whose values go
    in ``ExecutionParameters``. Athena parses each parameter as a SQL literal, so each value
    is sent as a quoted string literal with its quotes doubled; the value can never become
    SQL syntax.

    **The org id is the one literal.** With ``injected`` projection Athena needs a *static
    equality* on ``org_id`` (a literal or constant expression) and AWS documents no support
    for parameters there, so the org id is written into the SQL as ``'<org>'``. It is
    validated first against ``[A-Za-z0-9][A-Za-z0-9_-]{0,127}``, a charset that needs no
    escaping and that the archive writes verbatim as the path's partition value. Other org
    ids raise ``ValueError``.

    **Cost.** ``max_bytes_scanned`` is checked against ``Statistics.DataScannedInBytes``
    after the query ends and raises ``AthenaQueryError`` when exceeded. That is only a
    tripwire: the bytes are scanned and billed by then. The real cap is the workgroup's
    ``BytesScannedCutoffPerQuery``, which makes Athena cancel the query itself.
    """

    def __init__(
        self,
        database: str,
        workgroup: str | None = None,
        output_location: str | None = None,
        *,
        client: Any = None,
        format: Format = "jsonl",
        max_bytes_scanned: int | None = None,
        poll_initial: float = 0.2,
        poll_max: float = 5.0,
        timeout: float = 300,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _DATABASE.fullmatch(database):
            raise ValueError(f"database must match {_DATABASE.pattern}, got {database!r}")
        if poll_initial <= 0 or poll_max < poll_initial or timeout <= 0:
            raise ValueError("need 0 < poll_initial <= poll_max and timeout > 0")
        if max_bytes_scanned is not None and max_bytes_scanned < 0:
            raise ValueError("max_bytes_scanned must not be negative")
        self.database = database
        self.workgroup = workgroup
        self.output_location = output_location
        self.format = _check_format(format)
        self.max_bytes_scanned = max_bytes_scanned
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock
        if client is None:
            import boto3

            client = boto3.client("athena")
        self.client = client

    def get_audit_logs(
        self,
        table: str,
        org_id: str,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """At most ``limit`` events of ``org_id``, newest first, as event dicts."""
        statement = select_statement(
            table,
            org_id,
            format=self.format,
            actor=actor,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
        )
        query_id = self._start(statement)
        self._wait(query_id)
        rows = self._results(query_id)
        return self._events(rows, org_id)

    # -- the Athena calls --------------------------------------------------------------------

    def _start(self, statement: SelectStatement) -> str:
        request: dict[str, Any] = {
            "QueryString": statement.sql,
            "QueryExecutionContext": {"Database": self.database},
            "ExecutionParameters": statement.execution_parameters(),
        }
        if self.workgroup is not None:
            request["WorkGroup"] = self.workgroup
        if self.output_location is not None:
            request["ResultConfiguration"] = {"OutputLocation": self.output_location}
        response = self.client.start_query_execution(**request)
        query_id: str = response["QueryExecutionId"]
        return query_id

    def _wait(self, query_id: str) -> None:
        deadline = self._clock() + self.timeout
        delay = self.poll_initial
        while True:
            execution = self.client.get_query_execution(QueryExecutionId=query_id)
            execution = execution["QueryExecution"]
            status = execution.get("Status", {})
            state = status.get("State")
            if state == "SUCCEEDED":
                scanned = execution.get("Statistics", {}).get("DataScannedInBytes", 0)
                if self.max_bytes_scanned is not None and scanned > self.max_bytes_scanned:
                    raise AthenaQueryError(
                        f"query scanned {scanned} bytes, more than max_bytes_scanned="
                        f"{self.max_bytes_scanned} (set BytesScannedCutoffPerQuery on the "
                        "workgroup to stop such queries)",
                        query_execution_id=query_id,
                    )
                return
            if state in ("FAILED", "CANCELLED"):
                reason = status.get("StateChangeReason") or "no reason given"
                raise AthenaQueryError(
                    f"Athena query {query_id} {state}: {reason}", query_execution_id=query_id
                )
            remaining = deadline - self._clock()
            if remaining <= 0:
                self._stop(query_id)
                raise AthenaQueryError(
                    f"Athena query {query_id} still {state} after {self.timeout} s; "
                    "it was cancelled",
                    query_execution_id=query_id,
                )
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max)

    def _stop(self, query_id: str) -> None:
        # Best effort: the timeout is what gets reported.
        with contextlib.suppress(Exception):
            self.client.stop_query_execution(QueryExecutionId=query_id)

    def _results(self, query_id: str) -> list[dict[str, str | None]]:
        rows: list[dict[str, str | None]] = []
        names: list[str] | None = None
        token: str | None = None
        first = True
        while True:
            request: dict[str, Any] = {"QueryExecutionId": query_id}
            if token is not None:
                request["NextToken"] = token
            page = self.client.get_query_results(**request)
            result = page["ResultSet"]
            if names is None:
                info = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                names = [column["Name"] for column in info]
            data = result.get("Rows", [])
            for index, row in enumerate(data):
                cells = [cell.get("VarCharValue") for cell in row.get("Data", [])]
                # A SELECT's first result row is the header (the column names).
                if first and index == 0 and cells == names:
                    continue
                rows.append(dict(zip(names, cells, strict=True)))
            first = False
            token = page.get("NextToken")
            if not token:
                return rows

    def _events(self, rows: list[dict[str, str | None]], org_id: str) -> list[dict[str, Any]]:
        plan = _plan()
        events: list[dict[str, Any]] = []
        for row in rows:
            event: dict[str, Any] = {}
            for node in plan:
                value = _convert(node, row.get(node.name))
                event[node.name] = _restore(node, value)
            event["org_id"] = org_id
            events.append(event)
        return events
